"""One path from samples to embeddings: single calls, batches and long files give the plain computation's numbers.

Reference computations are the eager network through the original's chunking
(:func:`~bob.learn.pytorch.embedding.embed_spectrogram`, itself held to the
original by the golden tests). Tolerance: embeddings atol=1e-5, rtol=0
(data/README.md, "Tolerances"). No timings are tested.
"""
import numpy
import pytest
import torch

from bob.learn.pytorch import pipeline as pipeline_module
from bob.learn.pytorch import streaming
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor, ResNetExtractor

from .helpers_audio import ATOL, eager_embedding, long_signal, speech, whole_spectrogram

CLASSES = {"drn": DltResNetExtractor, "rn": ResNetExtractor}


@pytest.fixture(params=["drn", "rn"])
def fresh_extractor(request, drn_file, rn_file):
    """A new extractor per test (the tests change its state)."""
    return CLASSES[request.param](str(drn_file if request.param == "drn" else rn_file))


@pytest.mark.parametrize("net", ["drn", "rn"])
def test_call_matches_eager_computation(extractors, net):
    audio = speech("flite_awb_u1")
    extractor = extractors[net]
    expected = eager_embedding(extractor.network, whole_spectrogram(audio))
    numpy.testing.assert_allclose(extractor(audio), expected, rtol=0, atol=ATOL)


def test_replaced_submodules_run_eagerly_once_any_is_in_train_mode(drn_file):
    extractor = DltResNetExtractor(str(drn_file))
    network = extractor.network
    assert extractor.pipeline.runs_as_built()
    network.layer2[0].bn1.train()
    assert not extractor.pipeline.runs_as_built() and extractor.pipeline.forward() is network
    network.eval()
    network.net_type = "prefc"
    assert not extractor.pipeline.runs_as_built()


def test_train_mode_network_runs_exactly_as_given(drn_file):
    extractor = DltResNetExtractor(str(drn_file))
    network = extractor.network.train()
    specs = whole_spectrogram(speech("fest_ked_u1"))
    result = extractor.extract_embeddings(network, specs, 100, batch_size=2)
    numpy.testing.assert_array_equal(result, eager_embedding(network, specs, 100, 2))


@pytest.mark.parametrize("cls", [DltResNetExtractor, ResNetExtractor])
def test_test_mode_network_runs_exactly_as_given(cls):
    torch.manual_seed(3)
    extractor = cls(test=True)
    audio = speech("flite_rms_u2")
    assert extractor.runtime == "eager"
    numpy.testing.assert_array_equal(extractor(audio), eager_embedding(extractor.network, whole_spectrogram(audio)))


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
    forward = extractor.pipeline.forward()

    def recording(batch):
        shapes.append(tuple(batch.shape))
        return forward(batch)

    monkeypatch.setattr(extractor.pipeline, "forward", lambda: recording)
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


# -- long files: the choice is made in one place ------------------------------------------------------


def spy_on_embed_long(monkeypatch):
    calls = []
    original = pipeline_module.embed_long

    def spy(*args, **kwargs):
        calls.append(args[2].n_frames)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "embed_long", spy)
    return calls


def test_long_inputs_are_embedded_block_by_block_by_every_entry_point(fresh_extractor, monkeypatch):
    audio = (16000, long_signal())
    expected = fresh_extractor(audio)
    calls = spy_on_embed_long(monkeypatch)
    monkeypatch.setattr(streaming, "BLOCK_STEPS", 16)
    fresh_extractor.pipeline.streaming_min_frames = 2000
    numpy.testing.assert_allclose(fresh_extractor(audio), expected, rtol=0, atol=ATOL)
    specs = whole_spectrogram(audio)
    numpy.testing.assert_allclose(
        fresh_extractor.extract_embeddings(fresh_extractor.network, specs, 0), expected, rtol=0, atol=ATOL
    )
    numpy.testing.assert_allclose(fresh_extractor.embed_many([audio])[0:1], expected, rtol=0, atol=ATOL)
    assert calls == [len(specs)] * 3


def test_chunked_extraction_never_streams(drn_file, monkeypatch):
    extractor = DltResNetExtractor(str(drn_file))
    extractor.pipeline.streaming_min_frames = 100
    calls = spy_on_embed_long(monkeypatch)
    specs = whole_spectrogram((16000, long_signal()))
    result = extractor.extract_embeddings(extractor.network, specs, 300, batch_size=3, min_length=30)
    numpy.testing.assert_allclose(result, eager_embedding(extractor.network, specs, 300, 3), rtol=0, atol=ATOL)
    assert result.shape == (9, 128)
    assert calls == []


def test_a_network_in_train_mode_never_streams(drn_file, monkeypatch):
    extractor = DltResNetExtractor(str(drn_file))
    extractor.pipeline.streaming_min_frames = 100
    extractor.network.train()
    calls = spy_on_embed_long(monkeypatch)
    audio = (16000, long_signal()[:80000])
    numpy.testing.assert_array_equal(extractor(audio), eager_embedding(extractor.network, whole_spectrogram(audio)))
    assert calls == []
