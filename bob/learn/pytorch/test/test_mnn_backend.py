"""The MNN backend: its numbers, its quiet build, its errors, and no network logger.

The comparisons with the eager network for every backend (MNN included) are in
``test_fast_paths.py``; this module tests what only the MNN backend does.
Tolerances as there: embeddings atol=1e-5, frame features 1e-4 of their
largest value (``fast.RUNNER_FRAMES_RTOL``). No timings are tested.
"""
import logging
import multiprocessing
import os
import sys
import threading

import numpy
import pytest
import torch

from bob.learn.pytorch.preprocessor.audio import fast, mnn_backend
from bob.learn.pytorch.preprocessor.audio.fast import RUNNER_FRAMES_RTOL, FrameFeatures, embedding_head

pytestmark = pytest.mark.skipif(not mnn_backend.available(), reason='MNN is not installed (pip install ".[fast]")')

ATOL = 1e-5


@pytest.fixture(scope="module")
def mnn_runners(extractors):
    """``{net: MnnFrameRunner}`` for the two reference networks, built once."""
    return {net: mnn_backend.build_mnn_runner(FrameFeatures(extractors[net].network).eval()) for net in ("drn", "rn")}


def random_batch(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_build_prints_nothing(extractors, capfd):
    """MNN's C++ banners and the converter's progress stay out of the process's standard output and error."""
    mnn_backend.build_mnn_runner(FrameFeatures(extractors["drn"].network).eval())
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_mnn_command_line_wrappers_and_their_network_logger_are_never_imported(mnn_runners):
    """``MNN.tools`` sends usage logs over the network (and pip-installs a logging client): it must stay out."""
    loaded = [name for name in sys.modules if name.startswith("MNN.tools") or name.split(".")[0] == "aliyun"]
    assert loaded == []


@pytest.mark.parametrize("net", ["drn", "rn"])
@pytest.mark.parametrize("shape", [(1, 1, 37, 257), (1, 1, 998, 257), (4, 1, 150, 257), (1, 1, 300, 266)])
def test_frames_and_embeddings_match_the_eager_network(extractors, mnn_runners, net, shape):
    network = extractors[net].network
    x = random_batch(shape, seed=sum(shape))
    with torch.inference_mode():
        frames, eager = mnn_runners[net](x), network.forward_frames(x)
        assert frames.shape == eager.shape and frames.dtype == torch.float32
        assert float((frames - eager).abs().max()) <= RUNNER_FRAMES_RTOL * float(eager.abs().max())
        numpy.testing.assert_allclose(embedding_head(network, frames), network(x), rtol=0, atol=ATOL)


def test_results_do_not_share_mnn_memory(mnn_runners):
    """MNN reuses its output buffer; each result must be a copy that the next call leaves alone."""
    runner = mnn_runners["drn"]
    first_input, second_input = random_batch((1, 1, 200, 257), 1), random_batch((1, 1, 200, 257), 2)
    first = runner(first_input)
    kept = first.clone()
    second = runner(second_input)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    assert not torch.equal(first, second)


def test_calls_from_two_threads_give_the_one_thread_results(mnn_runners):
    runner = mnn_runners["rn"]
    inputs = [random_batch((1, 1, 120 + 40 * i, 257), 10 + i) for i in range(6)]
    expected = [runner(x) for x in inputs]
    results = [None] * len(inputs)

    def work(indices):
        for i in indices:
            results[i] = runner(inputs[i])

    threads = [threading.Thread(target=work, args=(range(start, len(inputs), 2),)) for start in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result, reference in zip(results, expected):
        torch.testing.assert_close(result, reference, rtol=0, atol=0)


def test_larger_winograd_tiles_fail_the_check_and_are_not_used(extractors, monkeypatch, caplog):
    """MNN's own default (up to F(6x6, 3x3)) rounds too much: the probe rejects it, which is why the hint is 1."""
    monkeypatch.setattr(mnn_backend, "WINOGRAD_HINT", 3)
    network = extractors["drn"].network
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch"):
        runner = fast.build_frame_runner(network, "mnn")
    assert runner == network.forward_frames
    assert "mnn network differs from the eager one" in caplog.text


def test_an_unconvertible_model_raises_with_the_converter_messages(capfd):
    with pytest.raises(RuntimeError, match=r"MNN could not convert the exported network: .*not onnx model"):
        mnn_backend.convert_onnx(b"not a model")
    assert capfd.readouterr().out == ""


def test_a_failing_native_call_keeps_its_output_in_the_error(capfd):
    def noisy_failure():
        import os

        os.write(1, b"native complaint\n")
        raise ValueError("broken")

    with pytest.raises(RuntimeError, match=r"ValueError: broken; MNN said: native complaint"):
        mnn_backend._quietly(noisy_failure)
    assert capfd.readouterr().out == ""


def test_a_process_without_standard_streams_still_builds(monkeypatch):
    """With file descriptors 1 and 2 closed (a daemon), there is nothing to redirect: MNN runs as it is."""

    def closed(descriptor):
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(mnn_backend.os, "dup", closed)
    result, output = mnn_backend._quietly(lambda: 42)
    assert (result, output) == (42, "")


def test_runner_reports_its_settings(mnn_runners):
    assert repr(mnn_runners["drn"]) == f"MnnFrameRunner(threads={torch.get_num_threads()}, winograd_hint=1)"
    assert fast.runner_backend(mnn_runners["drn"]) == "mnn"


def test_missing_mnn_is_an_import_error_naming_the_extra(extractors, monkeypatch):
    monkeypatch.setattr(mnn_backend, "available", lambda: False)
    with pytest.raises(ImportError, match=r'MNN is not installed: pip install "bob.learn.pytorch\[fast\]"'):
        mnn_backend.build_mnn_runner(FrameFeatures(extractors["drn"].network).eval())


# -- processes made by fork ---------------------------------------------------------------------------

#: The runner a forked child inherits (set by the test before forking).
_INHERITED = {}


def _frames_in_forked_child(seed):
    """Run the inherited runner in a child process; return its frames and the warnings it logged."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    log = logging.getLogger(mnn_backend.__name__)
    log.setLevel(logging.WARNING)  # the command-line tests leave the package's loggers at ERROR
    log.addHandler(handler)
    x = torch.from_numpy(numpy.random.RandomState(seed).randn(1, 1, 150, 257).astype(numpy.float32))
    return _INHERITED["runner"](x).numpy(), messages


def test_a_forked_child_runs_the_inherited_runner_on_one_thread(mnn_runners):
    """MNN's worker threads do not survive fork: without the reload on one thread, the child would hang."""
    runner = mnn_runners["drn"]
    if runner.threads == 1:
        pytest.skip("needs a multi-threaded runner (torch.get_num_threads() > 1)")
    x = torch.from_numpy(numpy.random.RandomState(5).randn(1, 1, 150, 257).astype(numpy.float32))
    expected = runner(x).numpy()  # the parent has started MNN's threads
    _INHERITED["runner"] = runner
    with multiprocessing.get_context("fork").Pool(1) as pool:
        frames, messages = pool.apply_async(_frames_in_forked_child, (5,)).get(timeout=120)
    assert float(numpy.abs(frames - expected).max()) <= RUNNER_FRAMES_RTOL * float(numpy.abs(expected).max())
    assert len(messages) == 1 and "so MNN runs on one thread in this process" in messages[0]
    assert runner(x).numpy().tolist() == expected.tolist(), "the parent keeps its own threads"


def test_thread_count_falls_to_one_only_in_a_child_of_the_pools_owner(monkeypatch, caplog):
    monkeypatch.setattr(mnn_backend, "_threads_started_in", os.getpid())
    assert mnn_backend._usable_threads(2) == 2
    monkeypatch.setattr(mnn_backend, "_threads_started_in", os.getpid() + 1)
    with caplog.at_level(logging.WARNING, logger=mnn_backend.__name__):
        assert mnn_backend._usable_threads(2) == 1
        assert mnn_backend._usable_threads(1) == 1
    assert [record.getMessage().split(";")[0] for record in caplog.records] == [
        f"MNN's worker threads were started in process {os.getpid() + 1}, from which this process "
        f"{os.getpid()} was forked"
    ]
