"""Long recordings embedded block by block equal the whole-utterance computation (streaming module)."""
import subprocess
import sys
import textwrap

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bob.learn.pytorch import pretrained, streaming

from .conftest import REPO
from .helpers_audio import ATOL, eager_embedding, long_signal, whole_spectrogram

DRN = pretrained.get("dltresnet34")


@settings(max_examples=200, deadline=None)
@given(n_frames=st.integers(37, 40000), block_steps=st.integers(1, 60), halo_steps=st.integers(0, 30))
def test_block_plan_covers_every_output_step_once(n_frames, block_steps, halo_steps):
    blocks = streaming.plan_blocks(n_frames, DRN, block_steps, halo_steps)
    assert blocks[0].keep_start == 0 and blocks[-1].keep_stop == DRN.output_steps(n_frames)
    for block, following in zip(blocks, blocks[1:]):
        assert block.keep_stop == following.keep_start
    for block in blocks:
        assert block.start % DRN.time_stride == 0 and block.first_step == block.start // DRN.time_stride
        computed = DRN.output_steps(block.stop - block.start)
        assert block.first_step <= block.keep_start < block.keep_stop <= block.first_step + computed
        assert block.keep_start - block.first_step >= min(halo_steps, block.keep_start)
    assert blocks[-1].stop == n_frames


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
def test_signal_source_applies_the_2_15_rule_without_copying(samples, scale):
    source = streaming.signal_source((16000, samples), block_samples=128)
    assert source.scale == scale and source.samples is samples
    numpy.testing.assert_array_equal(source.signal(0, len(samples)), samples.astype(numpy.float64) * scale)


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf])
def test_signal_source_finds_a_bad_sample_in_any_block(bad):
    samples = numpy.full(1000, 0.25, dtype=numpy.float32)
    samples[900] = bad
    with pytest.raises(ValueError, match="audio contains 1 NaN or infinite sample"):
        streaming.signal_source((16000, samples), block_samples=128)


def test_column_statistics_equal_numpy():
    specs = whole_spectrogram((16000, long_signal()))
    mean, std = streaming.column_statistics(streaming.SpectrogramArray(specs, DRN.front_end.bins), block_frames=333)
    numpy.testing.assert_allclose(mean, specs.mean(axis=0), rtol=1e-12)
    numpy.testing.assert_allclose(std, specs.std(axis=0), rtol=1e-12)


@pytest.mark.parametrize("net", ["drn", "rn"])
@pytest.mark.parametrize("as_built", [True, False], ids=["runtime", "eager"])
def test_block_embedding_equals_whole_utterance(extractors, net, as_built):
    extractor = extractors[net]
    network = extractor.network
    audio = (16000, long_signal())
    expected = eager_embedding(network, whole_spectrogram(audio))
    runtime = extractor.pipeline.runtime if as_built else network.forward_frames
    source = streaming.signal_source(audio)
    result = streaming.embed_long(network, runtime, source, extractor.pretrained, block_steps=16)
    assert len(streaming.plan_blocks(source.n_frames, extractor.pretrained, 16)) == 6
    assert result.shape == (1, 128) and result.dtype == numpy.float32
    numpy.testing.assert_allclose(result, expected, rtol=0, atol=ATOL)


def test_too_little_context_is_detected(drn_extractor):
    """The comparison above can fail: blocks without enough context change the embedding."""
    network = drn_extractor.network
    specs = whole_spectrogram((16000, long_signal()))
    expected = eager_embedding(network, specs)
    source = streaming.SpectrogramArray(specs, DRN.front_end.bins)
    result = streaming.embed_long(network, network.forward_frames, source, DRN, block_steps=8, halo_steps=2)
    assert numpy.max(numpy.abs(result - expected)) > ATOL


def test_too_few_frames_for_an_embedding_are_refused(drn_extractor):
    source = streaming.SpectrogramArray(numpy.ones((36, 257)), DRN.front_end.bins)
    with pytest.raises(ValueError, match="36 frames are too few for an embedding \\(at least 37 are needed\\)"):
        streaming.embed_long(drn_extractor.network, drn_extractor.network.forward_frames, source, DRN)


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
