"""The fast paths give the numbers of the plain computation: optimised runner, batch API, long files.

Reference computations here are the eager network through
:func:`~bob.learn.pytorch.preprocessor.audio.embedding.embed_spectrogram`
(itself checked against the original by the golden tests). Tolerance: embeddings
atol=1e-5, rtol=0 (data/README.md, "Tolerances"). No timings are tested.
"""
import logging
import pickle
import re
import subprocess
import sys
import textwrap

import numpy
import pytest
import scipy.io.wavfile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bob.learn.pytorch.preprocessor.audio import DltResNet as extractor_module
from bob.learn.pytorch.preprocessor.audio import (
    DltResNetExtractor,
    ResNetExtractor,
    fast,
    mnn_backend,
    ort_backend,
    streaming,
)
from bob.learn.pytorch.preprocessor.audio.embedding import embed_spectrogram, standardize, standardized_batch
from bob.learn.pytorch.preprocessor.audio.fast import RUNNER_FRAMES_RTOL, FastForward, embedding_head
from bob.learn.pytorch.preprocessor.audio.frontend import prepare_signal, spectrogram

from .conftest import REPO, SPEECH

ATOL = 1e-5
CLASSES = {"drn": DltResNetExtractor, "rn": ResNetExtractor}


def speech(name):
    rate, samples = scipy.io.wavfile.read(SPEECH / f"{name}.wav")
    return rate, samples


def long_signal():
    """About 26 s of int16 speech (2573 frames): the bundled recordings end to end."""
    names = sorted(path.stem for path in SPEECH.glob("*.wav"))[:9]
    return numpy.concatenate([speech(name)[1] for name in names])


def whole_spectrogram(audio):
    return spectrogram(prepare_signal(audio), 16000)


def eager_embedding(network, specs, L=0, batch_size=1, min_length=30):
    return embed_spectrogram(network, specs, L, batch_size, min_length)


@pytest.fixture(params=["drn", "rn"])
def fresh_extractor(request, drn_file, rn_file):
    """A new extractor per test (the tests change its state)."""
    path = drn_file if request.param == "drn" else rn_file
    return CLASSES[request.param](str(path))


# -- optimised runner -------------------------------------------------------------------------------


OPTIMISED_BACKENDS = ["mnn", "onnxruntime", "torchscript"]
#: The optional runtimes of the ``fast`` extra, with the name their install hint gives.
OPTIONAL_RUNTIMES = {"mnn": (mnn_backend, "MNN"), "onnxruntime": (ort_backend, "ONNX Runtime")}


@pytest.fixture(params=OPTIMISED_BACKENDS)
def backend(request):
    if not fast.backend_available(request.param):
        pytest.skip(f'{request.param} is not installed (pip install ".[fast]")')
    return request.param


@pytest.fixture
def without_fast_extra(monkeypatch):
    """Behave as if neither MNN nor ONNX Runtime were installed."""
    for module, _ in OPTIONAL_RUNTIMES.values():
        monkeypatch.setattr(module, "available", lambda: False)


@pytest.fixture(scope="module")
def built_runners(extractors):
    """``{(net, backend): runner}``, each built once for this module."""
    return {}


def runner_for(extractors, built_runners, net, backend):
    key = (net, backend)
    if key not in built_runners:
        built_runners[key] = fast.build_frame_runner(extractors[net].network, backend)
    return built_runners[key]


@pytest.mark.parametrize("net", ["drn", "rn"])
@pytest.mark.parametrize("shape", [(1, 1, 37, 257), (3, 1, 298, 257), (1, 1, 1001, 257), (2, 1, 64, 272)])
def test_optimised_runner_matches_eager_network(extractors, built_runners, net, backend, shape):
    network = extractors[net].network
    runner = runner_for(extractors, built_runners, net, backend)
    assert fast.runner_backend(runner) == backend
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.inference_mode():
        optimised, eager = runner(x), network.forward_frames(x)
        assert optimised.shape == eager.shape and optimised.dtype == torch.float32
        assert float((optimised - eager).abs().max()) <= RUNNER_FRAMES_RTOL * float(eager.abs().max())
        numpy.testing.assert_allclose(embedding_head(network, optimised), network(x), rtol=0, atol=ATOL)


@pytest.mark.parametrize("net", ["drn", "rn"])
def test_call_through_each_backend_matches_eager(net, backend, drn_file, rn_file):
    path = drn_file if net == "drn" else rn_file
    extractor = CLASSES[net](str(path), backend=backend)
    audio = speech("flite_awb_u2")
    assert extractor._fast.runner_backend(extractor.network) == backend
    expected = eager_embedding(extractor.network, whole_spectrogram(audio))
    numpy.testing.assert_allclose(extractor(audio), expected, rtol=0, atol=ATOL)


def installed_auto_forms():
    return [name for name in fast.auto_backends() if fast.backend_available(name)]


def test_default_backend_is_the_first_installed_form_for_this_processor(drn_extractor):
    assert drn_extractor.backend == "auto"
    assert drn_extractor._fast.runner_backend(drn_extractor.network) == installed_auto_forms()[0]


@pytest.mark.parametrize(
    "capability, order",
    [
        ("AVX2", ("mnn", "onnxruntime", "torchscript")),
        ("DEFAULT", ("mnn", "onnxruntime", "torchscript")),
        ("NO AVX", ("mnn", "onnxruntime", "torchscript")),
        ("AVX512", ("onnxruntime", "mnn", "torchscript")),
    ],
)
def test_auto_order_follows_the_processor(capability, order):
    assert fast.auto_backends(capability) == order


def test_auto_order_reads_the_capability_torch_reports(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert fast.auto_backends() == fast.AUTO_BACKENDS_AVX512
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert fast.auto_backends() == fast.AUTO_BACKENDS


@pytest.fixture
def both_fast_forms():
    missing = [name for name in OPTIONAL_RUNTIMES if not fast.backend_available(name)]
    if missing:
        pytest.skip(f'{", ".join(missing)} not installed (pip install ".[fast]")')


def counted(build, name, built):
    """``build`` that also records ``name`` in ``built``."""

    def wrapper(body):
        built.append(name)
        return build(body)

    return wrapper


@pytest.mark.parametrize("capability, kept", [("AVX2", "mnn"), ("AVX512", "onnxruntime")])
def test_auto_builds_only_the_first_form_and_logs_it(drn_extractor, both_fast_forms, monkeypatch, caplog, capability, kept):
    built = []
    for name in ("mnn", "onnxruntime", "torchscript"):
        monkeypatch.setitem(fast._BUILDERS, name, counted(fast._BUILDERS[name], name, built))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    with caplog.at_level(logging.INFO, logger="bob.learn.pytorch.preprocessor.audio.fast"):
        runner = fast.build_frame_runner(drn_extractor.network, "auto")
    assert fast.runner_backend(runner) == kept
    assert built == [kept]
    assert f"auto backend: {kept} (order here: {', '.join(fast.auto_backends(capability))})" in caplog.text


def test_auto_picks_the_same_form_every_time(drn_extractor):
    forms = {fast.runner_backend(fast.build_frame_runner(drn_extractor.network, "auto")) for _ in range(3)}
    assert forms == {installed_auto_forms()[0]}


def test_a_failing_first_form_falls_back_to_the_next_on_the_same_export(
    drn_extractor, both_fast_forms, monkeypatch, caplog
):
    exports = []

    def counted_export(body, *args, **kwargs):
        exports.append(body)
        return export(body, *args, **kwargs)

    def broken(body):
        body.onnx()
        raise RuntimeError("converter exploded")

    export = ort_backend.export_frame_body
    monkeypatch.setattr(ort_backend, "export_frame_body", counted_export)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setitem(fast._BUILDERS, "mnn", broken)
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch"):
        runner = fast.build_frame_runner(drn_extractor.network, "auto")
    assert fast.runner_backend(runner) == "onnxruntime"
    assert len(exports) == 1
    assert "mnn optimisation failed (RuntimeError: converter exploded); not used" in caplog.text


def test_eager_backend_runs_the_network_itself(drn_file):
    extractor = DltResNetExtractor(str(drn_file), backend="eager")
    network = extractor.network
    assert extractor._fast.frames(network) == network.forward_frames
    assert extractor._fast.runner_backend(network) == "eager"
    audio = speech("flite_kal_u3")
    numpy.testing.assert_array_equal(extractor(audio), eager_embedding(network, whole_spectrogram(audio)))


def test_unknown_backend_is_refused(drn_file):
    message = "backend must be one of 'auto', 'mnn', 'onnxruntime', 'torchscript', 'eager', got 'tensorrt'"
    with pytest.raises(ValueError, match=re.escape(message)):
        DltResNetExtractor(str(drn_file), backend="tensorrt")
    with pytest.raises(ValueError, match="backend must be one of"):
        fast.FastForward("ONNX")


@pytest.mark.parametrize("name", ["mnn", "onnxruntime"])
def test_optional_runtime_requested_but_missing_fails_at_construction(drn_file, monkeypatch, name):
    module, title = OPTIONAL_RUNTIMES[name]
    monkeypatch.setattr(module, "available", lambda: False)
    with pytest.raises(ImportError, match=re.escape(f'{title} is not installed: pip install "bob.learn.pytorch[fast]"')):
        DltResNetExtractor(str(drn_file), backend=name)


def test_auto_without_mnn_uses_onnxruntime(drn_file, monkeypatch):
    if not ort_backend.available():
        pytest.skip('ONNX Runtime is not installed (pip install ".[fast]")')
    monkeypatch.setattr(mnn_backend, "available", lambda: False)
    extractor = DltResNetExtractor(str(drn_file))
    assert extractor._fast.runner_backend(extractor.network) == "onnxruntime"


def test_auto_without_the_fast_extra_uses_torchscript(drn_file, without_fast_extra, caplog):
    extractor = DltResNetExtractor(str(drn_file))
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch"):
        assert extractor._fast.runner_backend(extractor.network) == "torchscript"
    assert not caplog.records, "a missing optional package is not worth a warning"


def test_failing_optimiser_falls_back_to_the_next_form(drn_file, monkeypatch, caplog):
    def broken(body):
        raise RuntimeError("exporter exploded")

    monkeypatch.setitem(fast._BUILDERS, "onnxruntime", broken)
    monkeypatch.setattr(ort_backend, "available", lambda: True)
    monkeypatch.setattr(mnn_backend, "available", lambda: False)
    extractor = DltResNetExtractor(str(drn_file))
    audio = speech("flite_rms_u1")
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch"):
        result = extractor(audio)
    assert extractor._fast.runner_backend(extractor.network) == "torchscript"
    assert "onnxruntime optimisation failed (RuntimeError: exporter exploded)" in caplog.text
    numpy.testing.assert_allclose(result, eager_embedding(extractor.network, whole_spectrogram(audio)), atol=ATOL)


def test_optimiser_with_wrong_numbers_is_not_used(drn_file, monkeypatch, caplog):
    def off_by_a_little(body):
        return lambda x: body.module(x) * 1.01

    monkeypatch.setitem(fast._BUILDERS, "torchscript", off_by_a_little)
    extractor = DltResNetExtractor(str(drn_file), backend="torchscript")
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch"):
        runner = extractor._fast.frames(extractor.network)
    assert runner == extractor.network.forward_frames
    assert "torchscript network differs from the eager one" in caplog.text


def test_thread_count_changes_rebuild_the_runner(drn_file, backend):
    extractor = DltResNetExtractor(str(drn_file), backend=backend)
    audio = speech("flite_slt_u3")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = extractor._fast.frames(extractor.network)
        one_thread = extractor(audio)
        torch.set_num_threads(2)
        double = extractor._fast.frames(extractor.network)
        two_threads = extractor(audio)
    finally:
        torch.set_num_threads(threads)
    assert single is not double
    if backend in OPTIONAL_RUNTIMES:
        assert (single.threads, double.threads) == (1, 2)
    numpy.testing.assert_allclose(one_thread, two_threads, rtol=0, atol=ATOL)


@pytest.mark.parametrize("net", ["drn", "rn"])
def test_call_matches_eager_computation(extractors, net):
    audio = speech("flite_awb_u1")
    extractor = extractors[net]
    expected = eager_embedding(extractor.network, whole_spectrogram(audio))
    numpy.testing.assert_allclose(extractor(audio), expected, rtol=0, atol=ATOL)


def test_changed_weights_rebuild_the_runner(fresh_extractor):
    audio = speech("flite_kal_u1")
    before = fresh_extractor(audio)
    network = fresh_extractor.network
    with torch.no_grad():
        network.conv5.weight.mul_(1.5)
        network.layer1[0].bn1.running_var.add_(0.5)
    after = fresh_extractor(audio)
    assert numpy.max(numpy.abs(after - before)) > 1e-3
    numpy.testing.assert_allclose(after, eager_embedding(network, whole_spectrogram(audio)), rtol=0, atol=ATOL)


def test_replaced_submodules_and_train_mode_submodules_are_seen(drn_file):
    extractor = DltResNetExtractor(str(drn_file))
    audio = speech("flite_kal_u2")
    before = extractor(audio)
    network = extractor.network
    replacement = torch.nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        replacement.weight.copy_(network.layer3[5].conv2.weight * 0.5)
    network.layer3[5].conv2 = replacement.eval()
    after = extractor(audio)
    assert numpy.max(numpy.abs(after - before)) > 1e-3
    numpy.testing.assert_allclose(after, eager_embedding(network, whole_spectrogram(audio)), rtol=0, atol=ATOL)
    network.layer2[0].bn1.train()
    assert extractor._fast.embed(network) is network


def test_train_mode_network_runs_exactly_as_given(drn_file):
    extractor = DltResNetExtractor(str(drn_file))
    network = extractor.network.train()
    specs = whole_spectrogram(speech("fest_ked_u1"))
    result = extractor.extract_embeddings(network, specs, 100, batch_size=2)
    numpy.testing.assert_array_equal(result, eager_embedding(network, specs, 100, 2))
    assert extractor._fast.embed(network) is network


@pytest.mark.parametrize("cls", [DltResNetExtractor, ResNetExtractor])
def test_test_mode_network_runs_exactly_as_given(cls):
    torch.manual_seed(3)
    extractor = cls(test=True)
    audio = speech("flite_rms_u2")
    result = extractor(audio)
    numpy.testing.assert_array_equal(result, eager_embedding(extractor.network, whole_spectrogram(audio)))


def test_other_models_are_used_as_given(drn_extractor, drn_file):
    other = DltResNetExtractor(str(drn_file)).network
    with torch.no_grad():
        other.bn5.bias.add_(0.1)
    specs = whole_spectrogram(speech("flite_slt_u1"))
    calls = []

    def model(batch):
        calls.append(tuple(batch.shape))
        return other(batch)

    result = drn_extractor.extract_embeddings(model, specs, 150, batch_size=2)
    numpy.testing.assert_array_equal(result, eager_embedding(other, specs, 150, 2))
    assert calls and all(shape[1:] == (1, 150, 257) for shape in calls[:-1])
    own = drn_extractor.extract_embeddings(drn_extractor.network, specs, 150, batch_size=2)
    assert numpy.max(numpy.abs(own - result)) > 1e-3


def test_pickled_extractor_rebuilds_its_fast_path(drn_extractor):
    audio = speech("librivox_0880")
    expected = drn_extractor(audio)
    clone = pickle.loads(pickle.dumps(drn_extractor))
    assert clone._network is None
    numpy.testing.assert_allclose(clone(audio), expected, rtol=0, atol=ATOL)


def test_pickled_extractor_keeps_its_backend(drn_file):
    extractor = DltResNetExtractor(str(drn_file), backend="torchscript")
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone.backend == "torchscript" and clone._fast.backend == "torchscript"
    state = extractor.__getstate__()
    del state["backend"]  # pickled before the option existed
    older = DltResNetExtractor.__new__(DltResNetExtractor)
    older.__setstate__(state)
    assert older.backend == "auto" and older._fast.backend == "auto"


def test_fast_forward_falls_back_for_non_embedding_modes(drn_file):
    network = DltResNetExtractor(str(drn_file)).network
    network.net_type = "prefc"
    fast = FastForward()
    assert fast.embed(network) is network
    assert fast.frames(network) == network.forward_frames


# -- standardisation --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("n_frames", [37, 298, 1001])
def test_standardize_is_bit_identical_to_the_plain_numpy_expression(dtype, n_frames):
    rng = numpy.random.default_rng(n_frames)
    chunk = (numpy.abs(rng.standard_normal((n_frames, 257))) * rng.uniform(0.1, 1000, 257)).astype(dtype)
    before = chunk.copy()
    plain = (chunk - chunk.mean(axis=0)) / (chunk.std(axis=0) + 1e-7)
    result = standardize(chunk)
    assert result.dtype == dtype
    numpy.testing.assert_array_equal(result, plain)
    numpy.testing.assert_array_equal(chunk, before)
    other = chunk[::-1] * 2
    batch = standardized_batch([chunk, other])
    assert batch.shape == (2, 1, n_frames, 257) and batch.dtype == numpy.float32
    numpy.testing.assert_array_equal(batch[0, 0], plain.astype(numpy.float32))
    other_plain = (other - other.mean(axis=0)) / (other.std(axis=0) + 1e-7)
    numpy.testing.assert_array_equal(batch[1, 0], other_plain.astype(numpy.float32))


# -- batch API --------------------------------------------------------------------------------------


def batch_inputs():
    """Three utterances of equal length, others of different lengths, rates and sample types."""
    cropped = [(16000, speech(name)[1][:40000]) for name in ("fest_ked_u1", "flite_awb_u1", "flite_kal_u1")]
    rate, samples = speech("flite_slt_u2")
    as_float = (rate, (samples / 32768.0).astype(numpy.float32))
    at_8k = (8000, speech("flite_rms_u1")[1][::2].copy())
    return [cropped[0], speech("librivox_0930"), cropped[1], as_float, at_8k, cropped[2], speech("flite_rms_u3")]


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_embed_many_equals_one_by_one(extractors, batch_size):
    audios = batch_inputs()
    for extractor in extractors.values():
        one_by_one = numpy.vstack([extractor(audio) for audio in audios])
        result = extractor.embed_many(audios, batch_size=batch_size)
        assert result.shape == (len(audios), 128) and result.dtype == numpy.float32
        numpy.testing.assert_allclose(result, one_by_one, rtol=0, atol=ATOL)


def test_embed_many_batches_equal_lengths_without_padding(drn_file, monkeypatch):
    extractor = DltResNetExtractor(str(drn_file))
    shapes = []
    original = extractor._fast.embed

    def recording_embed(network):
        forward = original(network)

        def run(batch):
            shapes.append(tuple(batch.shape))
            return forward(batch)

        return run

    monkeypatch.setattr(extractor._fast, "embed", recording_embed)
    extractor.embed_many(batch_inputs(), batch_size=2)
    equal = [shape for shape in shapes if shape[2] == 1 + (40000 - 400) // 160]
    assert sorted(shape[0] for shape in equal) == [1, 2]
    assert len(shapes) == 6
    assert all(shape[1] == 1 and shape[3] == 257 for shape in shapes)


def test_embed_many_in_train_mode_equals_one_by_one_exactly():
    torch.manual_seed(5)
    extractor = DltResNetExtractor(test=True)
    audios = batch_inputs()
    expected = numpy.vstack([extractor(audio) for audio in audios])
    numpy.testing.assert_array_equal(extractor.embed_many(audios, batch_size=8), expected)


def test_embed_many_edge_cases(drn_extractor):
    assert drn_extractor.embed_many([]).shape == (0, 128)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        drn_extractor.embed_many([speech("fest_ked_u1")], batch_size=0)
    for length in (5000, 100):
        short = (16000, numpy.ones(length, dtype=numpy.int16))
        with pytest.raises(ValueError, match=r"audios\[1\]: audio too short"):
            drn_extractor.embed_many([speech("fest_ked_u1"), short])
    with pytest.raises(TypeError, match=r"audios\[0\]: audio must be a \(rate, samples\) pair"):
        drn_extractor.embed_many(["missing.wav"])
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 2.5 \(float\)"):
        drn_extractor.embed_many([speech("fest_ked_u1")], batch_size=2.5)
    with pytest.raises(TypeError, match="audios must be a list .* got int"):
        drn_extractor.embed_many(3)


def test_embed_many_takes_numpy_batch_sizes_and_iterators(drn_extractor):
    names = ["fest_ked_u1", "flite_kal_u1", "fest_ked_u1"]
    expected = drn_extractor.embed_many([speech(name) for name in names], batch_size=2)
    from_iterator = drn_extractor.embed_many((speech(name) for name in names), batch_size=numpy.int64(2))
    numpy.testing.assert_array_equal(from_iterator, expected)


# -- long files -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(n_frames=st.integers(37, 40000), block_steps=st.integers(1, 60), halo_steps=st.integers(0, 30))
def test_block_plan_covers_every_output_step_once(n_frames, block_steps, halo_steps):
    blocks = streaming.plan_blocks(n_frames, block_steps, halo_steps)
    assert blocks[0].keep_start == 0 and blocks[-1].keep_stop == streaming.output_steps(n_frames)
    for block, following in zip(blocks, blocks[1:]):
        assert block.keep_stop == following.keep_start
    for block in blocks:
        assert block.start % streaming.TIME_STRIDE == 0
        computed = streaming.output_steps(block.stop - block.start)
        assert block.first_step <= block.keep_start < block.keep_stop <= block.first_step + computed
        assert block.keep_start - block.first_step >= min(halo_steps, block.keep_start)
    assert blocks[-1].stop == n_frames


def test_output_steps_follow_the_network(drn_extractor):
    network = drn_extractor.network
    with torch.inference_mode():
        for n_frames in (37, 64, 65, 300, 511, 1000):
            features = network.forward_frames(torch.zeros(1, 1, n_frames, 257))
            assert features.shape[2] == streaming.output_steps(n_frames)


@pytest.mark.parametrize(
    "audio",
    [
        (16000, long_signal()),
        (16000, (long_signal() / 32768.0).astype(numpy.float32)),
        (8000, long_signal()[::2].copy()),
    ],
    ids=["int16", "float32", "8k"],
)
def test_signal_source_frames_equal_the_whole_spectrogram(audio):
    whole = whole_spectrogram(audio)
    source = streaming.signal_source(audio)
    assert source.n_frames == len(whole)
    scale = numpy.abs(whole).max()
    for start, stop in [(0, 1), (0, 300), (1, 2), (299, 1000), (1000, len(whole))]:
        assert numpy.max(numpy.abs(source.frames(start, stop) - whole[start:stop])) <= 1e-12 * scale
    with pytest.raises(ValueError, match="outside the"):
        source.frames(0, len(whole) + 1)


def test_signal_source_checks_like_prepare_signal():
    with pytest.raises(ValueError, match="1 NaN or infinite sample"):
        streaming.signal_source((16000, numpy.array([0.0, numpy.nan] + [0.1] * 10000)))
    with pytest.raises(ValueError, match="must be mono"):
        streaming.signal_source((16000, numpy.zeros((1000, 2))))
    with pytest.raises(TypeError, match="integers or floats"):
        streaming.signal_source((16000, numpy.array(["a"] * 1000)))
    with pytest.raises(ValueError, match="audio samples reach 1e.*not an audio signal"):
        streaming.signal_source((16000, numpy.full(16000, 1e300)))
    with pytest.raises(ValueError, match="outside"):
        streaming.signal_source((100, numpy.zeros(16000)))


@pytest.mark.parametrize(
    "samples, scale",
    [
        (numpy.array([-32768, 0, 0] * 200, dtype=numpy.int16), 1.0),  # |int16 min| does not wrap to -32768
        (numpy.zeros(600, dtype=numpy.int16), 2.0**15),  # all-zero audio is "scaled", harmlessly, as in the original
        (numpy.array([255, 0] * 300, dtype=numpy.uint8), 1.0),
        (numpy.array([-1.0, 0.5] * 300), 1.0),  # a peak of exactly 1 is not scaled
        (numpy.array([-0.999, 0.5] * 300, dtype=numpy.float32), 2.0**15),
    ],
    ids=["int16-min", "zeros", "uint8", "float-peak-1", "float32-below-1"],
)
def test_signal_source_scales_like_prepare_signal(samples, scale):
    source = streaming.signal_source((16000, samples), block_samples=128)
    assert source.scale == scale
    numpy.testing.assert_array_equal(source.signal(0, len(samples)), prepare_signal((16000, samples)))


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf])
def test_signal_source_finds_a_bad_sample_in_any_block(bad):
    samples = numpy.full(1000, 0.25, dtype=numpy.float32)
    samples[900] = bad
    with pytest.raises(ValueError, match="audio contains 1 NaN or infinite sample"):
        streaming.signal_source((16000, samples), block_samples=128)


def test_column_statistics_equal_numpy():
    specs = whole_spectrogram((16000, long_signal()))
    mean, std = streaming.column_statistics(streaming.SpectrogramArray(specs), block_frames=333)
    numpy.testing.assert_allclose(mean, specs.mean(axis=0), rtol=1e-12)
    numpy.testing.assert_allclose(std, specs.std(axis=0), rtol=1e-12)


@pytest.mark.parametrize("net", ["drn", "rn"])
@pytest.mark.parametrize("optimised", [True, False], ids=["optimised", "eager"])
def test_block_embedding_equals_whole_utterance(extractors, net, optimised):
    extractor = extractors[net]
    network = extractor.network
    audio = (16000, long_signal())
    expected = eager_embedding(network, whole_spectrogram(audio))
    runner = extractor._fast.frames(network) if optimised else network.forward_frames
    source = streaming.signal_source(audio)
    result = streaming.embed_long(network, runner, source, block_steps=16)
    assert len(streaming.plan_blocks(source.n_frames, 16)) == 6
    assert result.shape == (1, 128) and result.dtype == numpy.float32
    numpy.testing.assert_allclose(result, expected, rtol=0, atol=ATOL)


def test_too_little_context_is_detected(drn_extractor):
    """The comparison above can fail: blocks without enough context change the embedding."""
    network = drn_extractor.network
    specs = whole_spectrogram((16000, long_signal()))
    expected = eager_embedding(network, specs)
    source = streaming.SpectrogramArray(specs)
    result = streaming.embed_long(network, network.forward_frames, source, block_steps=8, halo_steps=2)
    assert numpy.max(numpy.abs(result - expected)) > ATOL


def spy_on_embed_long(monkeypatch):
    calls = []
    original = extractor_module.embed_long

    def spy(*args, **kwargs):
        calls.append(args[2].n_frames)
        return original(*args, **kwargs)

    monkeypatch.setattr(extractor_module, "embed_long", spy)
    return calls


def test_long_inputs_are_embedded_block_by_block(fresh_extractor, monkeypatch):
    audio = (16000, long_signal())
    expected = fresh_extractor(audio)
    calls = spy_on_embed_long(monkeypatch)
    monkeypatch.setattr(streaming, "BLOCK_STEPS", 16)
    fresh_extractor.streaming_min_frames = 2000
    numpy.testing.assert_allclose(fresh_extractor(audio), expected, rtol=0, atol=ATOL)
    specs = whole_spectrogram(audio)
    numpy.testing.assert_allclose(
        fresh_extractor.extract_embeddings(fresh_extractor.network, specs, 0), expected, rtol=0, atol=ATOL
    )
    numpy.testing.assert_allclose(fresh_extractor.embed_many([audio])[0:1], expected, rtol=0, atol=ATOL)
    assert calls == [len(specs)] * 3


def test_chunked_extraction_never_streams(drn_file, monkeypatch):
    extractor = DltResNetExtractor(str(drn_file))
    extractor.streaming_min_frames = 100
    calls = spy_on_embed_long(monkeypatch)
    specs = whole_spectrogram((16000, long_signal()))
    result = extractor.extract_embeddings(extractor.network, specs, 300, batch_size=3, min_length=30)
    numpy.testing.assert_allclose(result, eager_embedding(extractor.network, specs, 300, 3), rtol=0, atol=ATOL)
    assert result.shape == (9, 128)
    assert calls == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak memory from /proc/self/status")
def test_ten_minutes_embedded_in_bounded_memory(drn_file):
    """10 minutes of audio: the whole-utterance computation peaks about 1 GB higher, block by block far less.

    The peak is the kernel's VmHWM, which starts afresh in the subprocess
    (``ru_maxrss`` would carry over the peak of the test process itself).
    """
    script = textwrap.dedent(
        f"""
        import numpy

        def peak_mb():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmHWM:"))

        from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor
        extractor = DltResNetExtractor({str(drn_file)!r})
        extractor((16000, numpy.ones(16000, dtype=numpy.int16)))
        samples = numpy.empty(16000 * 600, dtype=numpy.int16)
        rng = numpy.random.default_rng(0)
        for start in range(0, len(samples), 1 << 20):
            block = samples[start : start + (1 << 20)]
            block[:] = rng.standard_normal(len(block)) * 3000
        before = peak_mb()
        embedding = extractor((16000, samples))
        after = peak_mb()
        assert embedding.shape == (1, 128) and numpy.all(numpy.isfinite(embedding))
        print(before, after)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr
    before_mb, after_mb = map(int, done.stdout.split())
    assert after_mb - before_mb < 400, (before_mb, after_mb)
