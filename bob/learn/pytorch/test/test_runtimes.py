"""The runtimes give the eager network's numbers, are built and checked once, and are rebuilt only on request."""
import logging
import os
import pickle

import numpy
import pytest
import torch

from bob.learn.pytorch import runtimes
from bob.learn.pytorch.errors import RuntimeBuildError
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor, EmbeddingExtractor, ResNetExtractor
from bob.learn.pytorch.runtimes import RUNNER_FRAMES_RTOL, build_runtime, embedding_head

from .forked_worker import embed_in_forked_child
from .helpers_audio import ATOL, eager_embedding, speech, whole_spectrogram

CLASSES = {"drn": DltResNetExtractor, "rn": ResNetExtractor}
needs_onnxruntime = pytest.mark.skipif(not runtimes.onnxruntime_available(), reason='needs ".[fast]"')


@pytest.fixture
def without_onnxruntime(monkeypatch):
    monkeypatch.setattr(runtimes, "onnxruntime_available", lambda: False)


@pytest.fixture(scope="module")
def optimised_runtimes(extractors):
    """``{runtime name: {net: runtime}}``, each built on first use, once for this module."""
    built = {}

    def get(name):
        if runtimes.missing_runtime(name):
            pytest.skip(runtimes.missing_runtime(name))
        if name not in built:
            built[name] = {net: build_runtime(extractor.network, name) for net, extractor in extractors.items()}
        return built[name]

    return get


@pytest.mark.parametrize("name", ["onnxruntime", "mnn"])
@pytest.mark.parametrize("net", ["drn", "rn"])
@pytest.mark.parametrize("shape", [(1, 1, 37, 257), (3, 1, 298, 257), (1, 1, 1001, 257), (2, 1, 64, 272)])
def test_optimised_runtimes_match_the_eager_network(extractors, optimised_runtimes, name, net, shape):
    network, runtime = extractors[net].network, optimised_runtimes(name)[net]
    assert runtime.name == name and runtime.threads == torch.get_num_threads()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.inference_mode():
        fast, eager = runtime(x), network.forward_frames(x)
        assert fast.shape == eager.shape and fast.dtype == torch.float32
        assert float((fast - eager).abs().max()) <= RUNNER_FRAMES_RTOL * float(eager.abs().max())
        numpy.testing.assert_allclose(embedding_head(network, fast), network(x), rtol=0, atol=ATOL)


@needs_onnxruntime
def test_auto_is_onnxruntime_when_installed(drn_extractor):
    assert drn_extractor.backend == "auto" and drn_extractor.runtime == "onnxruntime"


@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("net", ["drn", "rn"])
def test_call_through_each_runtime_matches_eager(net, backend, drn_file, rn_file):
    extractor = CLASSES[net](str(drn_file if net == "drn" else rn_file), backend=backend)
    audio = speech("flite_awb_u2")
    expected = eager_embedding(extractor.network, whole_spectrogram(audio))
    numpy.testing.assert_allclose(extractor(audio), expected, rtol=0, atol=ATOL)
    if backend == "eager":
        assert extractor.runtime == "eager" and extractor.pipeline.forward() is extractor.network


def test_without_the_fast_extra_auto_is_eager_and_onnxruntime_is_refused(drn_file, without_onnxruntime):
    assert DltResNetExtractor(str(drn_file)).runtime == "eager"
    with pytest.raises(ImportError, match=r'ONNX Runtime is not installed: pip install "bob.learn.pytorch\[fast\]"'):
        DltResNetExtractor(str(drn_file), backend="onnxruntime")


@pytest.mark.parametrize("name", ["fastest", "MNN", "torchscript"])
def test_unknown_or_removed_runtimes_are_refused_before_loading(drn_file, name):
    with pytest.raises(ValueError, match=rf"backend must be one of 'auto', 'onnxruntime', 'mnn', 'eager', got '{name}'"):
        DltResNetExtractor(str(drn_file), backend=name)


# -- MNN: opt-in, same numbers -------------------------------------------------------------------


def test_mnn_is_chosen_only_by_name(drn_file, optimised_runtimes):
    optimised_runtimes("mnn")  # skips without the mnn extra
    extractor = DltResNetExtractor(str(drn_file), backend="mnn")
    audio = speech("flite_kal_u1")
    assert extractor.runtime == "mnn"
    numpy.testing.assert_allclose(extractor(audio), eager_embedding(extractor.network, whole_spectrogram(audio)), rtol=0, atol=ATOL)
    assert DltResNetExtractor(str(drn_file)).runtime in ("onnxruntime", "eager")


def test_mnn_larger_winograd_tiles_would_fail_the_check(extractors, optimised_runtimes, monkeypatch):
    """MNN's default tiles (up to F(6x6, 3x3)) round beyond the tolerance: the check refuses them."""
    from bob.learn.pytorch import mnn_runtime

    optimised_runtimes("mnn")  # skips without the mnn extra
    monkeypatch.setattr(mnn_runtime, "WINOGRAD_HINT", 3)
    with pytest.raises(RuntimeBuildError, match="MNN's network differs from the eager one"):
        build_runtime(extractors["drn"].network, "mnn")


def test_mnn_without_its_extra_is_refused_before_loading(drn_file, monkeypatch):
    monkeypatch.setattr(runtimes, "mnn_available", lambda: False)
    with pytest.raises(ImportError, match=r'^MNN is not installed: pip install "bob.learn.pytorch\[mnn\]"$'):
        DltResNetExtractor(str(drn_file), backend="mnn")


@needs_onnxruntime
def test_a_failing_runtime_falls_back_to_eager_under_auto_and_fails_when_named(drn_file, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no kernel for this")

    monkeypatch.setattr(runtimes, "OnnxRuntime", broken)
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch.runtimes"):
        assert DltResNetExtractor(str(drn_file)).runtime == "eager"
    assert "ONNX Runtime could not run the network (RuntimeError: no kernel for this); using eager PyTorch" in caplog.text
    with pytest.raises(RuntimeBuildError, match=r"could not run the network \(RuntimeError: no kernel for this\); use backend 'auto' or 'eager'"):
        DltResNetExtractor(str(drn_file), backend="onnxruntime").network


@needs_onnxruntime
def test_a_runtime_with_wrong_numbers_is_never_used(drn_file, monkeypatch, caplog):
    monkeypatch.setattr(runtimes, "probe_errors", lambda network, runtime, bins, shape: (1e-2, 0.3))
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch.runtimes"):
        assert DltResNetExtractor(str(drn_file)).runtime == "eager"
    assert "differs from the eager one (frame features 0.01 relative, embeddings 0.3); using eager" in caplog.text
    with pytest.raises(RuntimeBuildError, match="differs from the eager one .*; use backend 'auto' or 'eager'"):
        DltResNetExtractor(str(drn_file), backend="onnxruntime").network


def test_the_runtime_is_built_once_when_the_network_loads(drn_file, monkeypatch):
    built = []
    original = runtimes.build_runtime

    def counting(*args, **kwargs):
        built.append(args[1:])
        return original(*args, **kwargs)

    from bob.learn.pytorch.preprocessor.audio import extractor as extractor_module

    monkeypatch.setattr(extractor_module, "build_runtime", counting)
    extractor = DltResNetExtractor(str(drn_file))
    for name in ("flite_kal_u1", "flite_kal_u2", "flite_kal_u1"):
        extractor(speech(name))
    extractor.embed_many([speech("flite_kal_u1"), speech("flite_kal_u2")])
    assert built == [("auto", 257)]


@needs_onnxruntime
def test_changed_weights_need_rebuild_runtime(drn_file):
    """The runtime keeps the weights it was built with: rebuild_runtime() is the one way to change them."""
    extractor = DltResNetExtractor(str(drn_file))
    audio = speech("flite_kal_u1")
    before = extractor(audio)
    network = extractor.network
    with torch.no_grad():
        network.conv5.weight.mul_(1.5)
        network.layer1[0].bn1.running_var.add_(0.5)
    numpy.testing.assert_array_equal(extractor(audio), before)  # documented: still the built weights
    assert extractor.rebuild_runtime() == "onnxruntime"
    after = extractor(audio)
    assert numpy.max(numpy.abs(after - before)) > 1e-3
    numpy.testing.assert_allclose(after, eager_embedding(network, whole_spectrogram(audio)), rtol=0, atol=ATOL)


@needs_onnxruntime
def test_rebuild_runtime_takes_the_thread_count_of_the_moment(drn_file):
    extractor = DltResNetExtractor(str(drn_file))
    audio = speech("flite_slt_u3")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        extractor.rebuild_runtime()
        one = extractor.pipeline.runtime
        one_thread = extractor(audio)
    finally:
        torch.set_num_threads(threads)
    extractor.rebuild_runtime()
    assert (one.threads, extractor.pipeline.runtime.threads) == (1, threads)
    numpy.testing.assert_allclose(one_thread, extractor(audio), rtol=0, atol=ATOL)


def test_pickled_extractor_keeps_its_runtime_choice_and_reloads(drn_file):
    extractor = EmbeddingExtractor("dltresnet34", str(drn_file), backend="eager")
    audio = speech("librivox_0880")
    expected = extractor(audio)
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._pipeline is None and clone.backend == "eager"
    assert clone.instance_token == extractor.instance_token
    numpy.testing.assert_array_equal(clone(audio), expected)
    assert clone.runtime == "eager"


def test_networks_in_train_mode_are_refused_by_build_runtime(drn_file):
    network = DltResNetExtractor(str(drn_file), backend="eager").network
    with pytest.raises(ValueError, match=r"needs a network in eval mode \(call network.eval\(\) first\)"):
        build_runtime(network.train(), "eager")


# -- the runtime cache ------------------------------------------------------------------------------


@needs_onnxruntime
def test_a_second_process_reads_the_checked_frame_body_from_the_cache_instead_of_exporting(drn_file, monkeypatch):
    import hashlib
    import json

    from bob.learn.pytorch import export_cache

    first = DltResNetExtractor(str(drn_file))
    assert first.runtime == "onnxruntime"
    (index,) = export_cache.cache_location().entries.glob("*.json")
    model = index.with_suffix(".onnx").read_bytes()
    recorded = json.loads(index.read_text())
    assert recorded["sha256"] == hashlib.sha256(model).hexdigest()
    assert recorded["check"]["frames"] <= RUNNER_FRAMES_RTOL and recorded["check"]["embedding"] <= runtimes.RUNNER_ATOL

    def no_export(*args):
        raise AssertionError("the frame body must come from the cache")

    probes = []
    probe_errors = runtimes.probe_errors
    monkeypatch.setattr(runtimes, "export_frame_body", no_export)
    monkeypatch.setattr(runtimes, "probe_errors", lambda *args: probes.append(args[3]) or probe_errors(*args))
    second = DltResNetExtractor(str(drn_file))  # a new extractor loads and builds as a new process would
    assert second.runtime == "onnxruntime" and probes == [(1, runtimes.LOAD_PROBE_FRAMES)]
    audio = speech("flite_kal_u1")
    numpy.testing.assert_array_equal(second(audio), first(audio))  # the same ONNX bytes, the same numbers
    numpy.testing.assert_allclose(second(audio), eager_embedding(second.network, whole_spectrogram(audio)), rtol=0, atol=ATOL)


@needs_onnxruntime
def test_a_wrong_cache_setting_is_raised_not_taken_for_a_runtime_failure(drn_file, monkeypatch):
    from bob.learn.pytorch import export_cache
    from bob.learn.pytorch.errors import SettingsError

    monkeypatch.setenv(export_cache.CACHE_ENVIRONMENT, "cache/relative")
    with pytest.raises(SettingsError, match="environment variable BOB_LEARN_PYTORCH_RUNTIME_CACHE must be an absolute folder or 'off', got 'cache/relative'"):
        DltResNetExtractor(str(drn_file)).network
# -- worker processes made by fork after the network was loaded ------------------------------------------

#: A forked child runs the same session on the same input: its embedding equals the parent's within float32 rounding.
FORK_ATOL = 1e-6


@needs_onnxruntime
def test_a_child_forked_after_loading_embeds_with_onnxruntime_while_torch_runs_two_threads(drn_file):
    parent, child = embed_in_forked_child(str(drn_file), "onnxruntime", threads=2)
    assert child.shape == (1, 128)
    numpy.testing.assert_allclose(child, parent, rtol=0, atol=FORK_ATOL)


def test_eager_in_a_child_forked_after_loading_raises_instead_of_hanging(drn_file):
    with pytest.raises(RuntimeError) as error:
        embed_in_forked_child(str(drn_file), "eager", threads=2)
    message = str(error.value)
    assert "forked from process" in message and "PyTorch's OpenMP threads do not survive fork" in message
    assert "'spawn' or 'forkserver'" in message and "backend 'onnxruntime'" in message
    assert "torch.set_num_threads(1) in the child" in message


def test_eager_in_a_forked_child_on_one_torch_thread_embeds(drn_file):
    parent, child = embed_in_forked_child(str(drn_file), "eager", threads=2, child_threads=1)
    numpy.testing.assert_allclose(child, parent, rtol=0, atol=FORK_ATOL)


def test_check_forked_child_refuses_only_the_runtimes_that_would_hang(monkeypatch):
    other = os.getpid() + 1  # as if the network had been loaded by the parent of this process
    runtimes.check_forked_child("eager", os.getpid())
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    runtimes.check_forked_child("onnxruntime", other)
    with pytest.raises(RuntimeError, match="MNN's worker threads do not survive fork"):
        runtimes.check_forked_child("mnn", other)
    with pytest.raises(RuntimeError, match=f"forked from process {other} after that one loaded the network"):
        runtimes.check_forked_child("eager", other)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    runtimes.check_forked_child("eager", other)
    runtimes.check_forked_child("mnn", other)


@pytest.mark.parametrize("shape", [(1, 512, 2, 1), (3, 512, 10, 1), (2, 512, 97, 1)])
def test_embedding_head_gives_forward_emb_of_the_frames(drn_file, shape):
    network = DltResNetExtractor(str(drn_file), backend="eager").network
    frames = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    with torch.inference_mode():
        eager = torch.nn.functional.normalize(network.em(torch.cat([frames.mean(2), frames.std(2)], 1).flatten(1)))
        head = runtimes.embedding_head(network, frames)
    assert head.dtype == torch.float32 and head.shape == (shape[0], 128)
    numpy.testing.assert_allclose(head.numpy(), eager.numpy(), rtol=0, atol=1e-6)
