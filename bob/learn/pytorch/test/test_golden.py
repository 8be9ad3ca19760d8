"""The original's numbers, reproduced: spectrograms, embeddings, chunking, intermediates.

Tolerances (data/README.md, "Tolerances"): spectrograms within 1e-12 of each array's maximum;
embeddings atol=1e-5, rtol=0.
"""
import numpy
import pytest
import torch

from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor, ResNetExtractor, spectrogram
from bob.learn.pytorch.embedding import plan_chunks, standardize
from bob.learn.pytorch.frontend import prepare_signal

from .conftest import load_fixture

AUDIO = ["audio_bobap_sample", "audio_float8k_2s", "audio_noise16k_int16_3s"]
EXTRACT = ["extract_T40", "extract_T300", "extract_T512", "extract_T1000", "extract_T512_f32"]
ATOL = 1e-5


def assert_spectrogram_close(actual, expected):
    assert actual.shape == expected.shape
    assert actual.dtype == numpy.float64
    assert numpy.max(numpy.abs(actual - expected)) <= 1e-12 * numpy.max(numpy.abs(expected))


def assert_embeddings_close(actual, expected):
    assert actual.shape == expected.shape
    assert actual.dtype == numpy.float32
    numpy.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL)


def assert_vector_close(actual, expected):
    """Compare an intermediate vector at the embeddings' tolerance, in its own units.

    The pooled vector (norm about 20) and the embedding layer's raw output (about
    10) are the embedding before normalisation: ``ATOL`` times their norm is the
    embeddings' ``ATOL``. A flat 1e-5 would be float32 noise at their scale: the
    AVX2 and AVX-512 kernels of the same torch differ by up to 1.7e-5 on them.
    """
    assert actual.shape == expected.shape
    numpy.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL * float(numpy.linalg.norm(expected)))


@pytest.mark.parametrize("name", AUDIO)
def test_prepared_signal_matches_original(name):
    data = load_fixture(name)
    prepared = prepare_signal((int(data["rate"]), data["data"]))
    assert prepared.dtype == numpy.float64
    numpy.testing.assert_allclose(prepared, data["prepared"], rtol=0, atol=1e-12 * numpy.abs(data["prepared"]).max())


@pytest.mark.parametrize("name", AUDIO)
def test_spectrogram_matches_bob_ap(name):
    data = load_fixture(name)
    assert_spectrogram_close(spectrogram(data["prepared"], 16000), data["spec"])


def test_spectrogram_takes_the_rate_into_account():
    data = load_fixture("spectrogram_8k")
    assert_spectrogram_close(spectrogram(data["data"], int(data["rate"])), data["spec"])


@pytest.mark.parametrize("net", ["drn", "rn"])
@pytest.mark.parametrize("name", AUDIO)
def test_call_matches_original(extractors, net, name):
    data = load_fixture(name)
    embedding = extractors[net]((int(data["rate"]), data["data"]))
    assert_embeddings_close(embedding, data[f"emb_{net}"])
    assert numpy.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", EXTRACT)
def test_chunk_boundaries_match_original(name):
    data = load_fixture(name)
    keys = [k for k in data if k.startswith("chunks_")]
    assert keys
    for key in keys:
        _, L, ml = key.split("_")
        expected = [tuple(row) for row in data[key].tolist()]
        assert plan_chunks(len(data["specs"]), int(L[1:]), int(ml[2:])) == expected, key


@pytest.mark.parametrize("net", ["drn", "rn"])
@pytest.mark.parametrize("name", EXTRACT)
def test_extract_embeddings_matches_original(extractors, net, name):
    data = load_fixture(name)
    extractor = extractors[net]
    keys = [key for key in data if key.startswith(f"{net}_L")]
    assert keys
    for key in keys:
        _, L, bs, ml = key.split("_")
        result = extractor.extract_embeddings(
            extractor.network, data["specs"], int(L[1:]), batch_size=int(bs[2:]), min_length=int(ml[2:])
        )
        assert_embeddings_close(result, data[key])


@pytest.mark.parametrize("net", ["drn", "rn"])
def test_intermediate_steps_match_original(extractors, net):
    data = load_fixture("intermediates_T300")
    normalized = standardize(data["specs"]).astype(numpy.float32)
    numpy.testing.assert_allclose(normalized, data["normalized_input"], rtol=0, atol=1e-6)
    network = extractors[net].network
    with torch.inference_mode():
        pooled = network.forward_cnn(torch.from_numpy(normalized)[None, None])
        raw = network.em(pooled)
        embedding = network(torch.from_numpy(normalized)[None, None])
    assert_vector_close(pooled.numpy(), data[f"{net}_prefc"])
    assert_vector_close(raw.numpy(), data[f"{net}_em_raw"])
    assert_embeddings_close(embedding.numpy(), data[f"{net}_emb"])


def test_train_mode_reproduces_original_batching(drn_file, rn_file):
    """A network left in train mode: results depend on the exact batch grouping, which we reproduce."""
    data = load_fixture("trainmode")
    for key in (k for k in data if not k.endswith("__specs")):
        net, _, L, bs = key.split("_")
        extractor = (ResNetExtractor(str(rn_file)) if net == "rn" else DltResNetExtractor(str(drn_file)))
        extractor.network.train()
        result = extractor.extract_embeddings(extractor.network, data[f"{key}__specs"], int(L[1:]), int(bs[2:]))
        assert_embeddings_close(result, data[key])


def test_train_mode_fixture_would_catch_a_missing_eval(drn_extractor):
    """Our eval-mode network differs from the train-mode outputs: the golden tests detect a missing eval()."""
    data = load_fixture("trainmode")
    result = drn_extractor.extract_embeddings(drn_extractor.network, data["drn_T300_L100_bs1__specs"], 100)
    assert numpy.max(numpy.abs(result - data["drn_T300_L100_bs1"])) > 0.05
    assert not drn_extractor.network.training


@pytest.mark.parametrize("net, cls", [("drn", DltResNetExtractor), ("rn", ResNetExtractor)])
def test_test_mode_reproduces_seeded_random_network(net, cls):
    data = load_fixture("testmode_seeded")
    key = next(k for k in data if k.startswith(f"{net}_seed") and "__" not in k)
    torch.manual_seed(int(data[f"{key}__torch_seed"]))
    extractor = cls(test=True)
    assert extractor.network.training
    assert extractor.model_path is None
    result = extractor.extract_embeddings(extractor.network, data[f"{key}__specs"], 0)
    assert_embeddings_close(result, data[key])


@pytest.mark.parametrize("net, cls", [("drn34", DltResNetExtractor), ("rn34", ResNetExtractor)])
def test_checkpoint_variants_give_identical_embeddings(checkpoint, net, cls):
    audio = load_fixture("audio_noise16k_int16_3s")
    inputs = (int(audio["rate"]), audio["data"])
    results = [cls(str(checkpoint(net, variant)))(inputs) for variant in ("original", "numpy_scalar", "no_prefix", "bare")]
    for result in results[1:]:
        numpy.testing.assert_array_equal(result, results[0])
    assert_embeddings_close(results[0], audio[f"emb_{net[:-2]}"])


def test_original_positional_call_still_works(drn_file, rn_file):
    """The documented config line: DltResNetExtractor(_model, _num_classes, use_res=_use_res)."""
    audio = load_fixture("audio_bobap_sample")
    inputs = (int(audio["rate"]), audio["data"])
    assert_embeddings_close(DltResNetExtractor(str(drn_file), 1211, use_res=False)(inputs), audio["emb_drn"])
    assert_embeddings_close(DltResNetExtractor(str(rn_file), 1211, use_res=True)(inputs), audio["emb_rn"])
