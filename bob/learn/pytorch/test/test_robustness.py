"""Whatever is thrown at the extractor: a finite unit-norm embedding or a documented exception."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bob.learn.pytorch import io as embedding_io

from .conftest import load_fixture

DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "float16", "float32", "float64", "bool", "complex64"]
RATES = [8000, 11025, 16000, 22050, 44100, 48000, 0, -8000, float("nan"), 15999.5, 16000.0, 500, 10**7]
AMPLITUDES = [0.0, 1e-30, 1e-3, 0.99, 1.0, 32767.0, 1e9, 1e200]


def _signal(seed, dtype, length, amplitude, special):
    rng = numpy.random.RandomState(seed)
    values = rng.standard_normal(length) * amplitude
    if special == "nan" and length:
        values[rng.randint(length)] = numpy.nan
    if special == "inf" and length:
        values[rng.randint(length)] = -numpy.inf
    kind = numpy.dtype(dtype).kind
    if kind in "iu":
        info = numpy.iinfo(dtype)
        values = numpy.clip(numpy.nan_to_num(values), info.min, info.max)
    with numpy.errstate(over="ignore", invalid="ignore"):
        return values.astype(dtype)


def _shape(signal, layout):
    return {
        "mono": signal,
        "column": signal[:, None],
        "row": signal[None, :],
        "stereo": numpy.stack([signal, signal]),
        "cube": signal[None, None, :],
        "list": signal.tolist(),
    }[layout]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(DTYPES),
    length=st.one_of(st.just(0), st.integers(1, 7000), st.integers(5000, 24000)),
    rate=st.one_of(st.sampled_from(RATES), st.integers(1000, 96000)),
    amplitude=st.sampled_from(AMPLITUDES),
    special=st.sampled_from([None, None, None, "nan", "inf"]),
    layout=st.sampled_from(["mono", "mono", "column", "row", "stereo", "cube", "list"]),
)
def test_any_input_gives_a_unit_embedding_or_a_documented_error(
    drn_extractor, seed, dtype, length, rate, amplitude, special, layout
):
    samples = _shape(_signal(seed, dtype, length, amplitude, special), layout)
    try:
        embedding = drn_extractor((rate, samples))
    except (ValueError, TypeError) as error:
        assert str(error)  # a message, never an empty exception
        return
    assert embedding.shape == (1, 128)
    assert embedding.dtype == numpy.float32
    assert numpy.all(numpy.isfinite(embedding))
    assert numpy.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("rate", [999, 768001, 1])
def test_rates_outside_the_supported_range_are_refused(drn_extractor, rate):
    with pytest.raises(ValueError, match=f"sampling rate {rate} Hz is outside the supported range 1000-768000 Hz"):
        drn_extractor((rate, numpy.zeros(16000, numpy.int16)))


def test_absurd_amplitudes_are_refused(drn_extractor):
    with pytest.raises(ValueError, match="audio samples reach 1e.*not an audio signal"):
        drn_extractor((16000, numpy.full(16000, 1e300)))


# -- nothing lost ----------------------------------------------------------------------------------


@pytest.fixture
def out(tmp_path):
    """An empty folder of its own (tmp_path also holds the isolated HOME)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_interrupted_write_keeps_the_previous_file_and_leaves_nothing_behind(drn_extractor, out, monkeypatch):
    path = out / "emb.hdf5"
    drn_extractor.write_data(numpy.ones((1, 128)), str(path))
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(OSError, match="disk full"):
        drn_extractor.write_data(numpy.zeros((1, 128)), str(path))
    assert sorted(os.listdir(out)) == ["emb.hdf5"]
    assert path.read_bytes() == before
    numpy.testing.assert_array_equal(drn_extractor.read_data(str(path)), numpy.ones((1, 128)))


def test_write_interrupted_by_keyboard_interrupt_leaves_nothing_behind(out, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(h5py.Group, "create_dataset", interrupt)
    with pytest.raises(KeyboardInterrupt):
        embedding_io.write_embedding(numpy.zeros((1, 128)), out / "emb.hdf5")
    assert os.listdir(out) == []


def test_unwritable_output_path_raises_naming_it(drn_extractor, out):
    blocker = out / "a_file"
    blocker.write_text("")
    target = blocker / "emb.hdf5"
    with pytest.raises(OSError, match=f"cannot write embeddings to {target}"):
        drn_extractor.write_data(numpy.zeros((1, 128)), str(target))
    assert sorted(os.listdir(out)) == ["a_file"]


# -- determinism and sharing -------------------------------------------------------------------------


def _inputs():
    noise = load_fixture("audio_noise16k_int16_3s")["data"]
    return [(16000, noise[offset : offset + 16000 + 800 * offset // 4000]) for offset in range(0, 32000, 4000)]


def test_repeated_calls_are_bit_identical(drn_extractor):
    audio = _inputs()[3]
    first = drn_extractor(audio)
    for _ in range(3):
        numpy.testing.assert_array_equal(drn_extractor(audio), first)


def test_one_extractor_shared_by_threads_matches_sequential_calls(drn_extractor):
    inputs = _inputs()
    sequential = [drn_extractor(audio) for audio in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(drn_extractor, inputs * 2))
    for index, result in enumerate(threaded):
        numpy.testing.assert_allclose(result, sequential[index % len(inputs)], rtol=0, atol=1e-6)


def test_lazy_loading_from_several_threads_loads_once(drn_file, monkeypatch):
    from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor

    extractor = DltResNetExtractor(str(drn_file))
    loads = []
    original = extractor._load_network

    def counting_load():
        loads.append(threading.get_ident())
        return original()

    monkeypatch.setattr(extractor, "_load_network", counting_load)
    with ThreadPoolExecutor(max_workers=4) as pool:
        networks = list(pool.map(lambda _: extractor.network, range(8)))
    assert len(loads) == 1
    assert all(network is networks[0] for network in networks)


def test_written_files_get_the_usual_permissions(out):
    previous = os.umask(0o022)
    try:
        embedding_io.write_embedding(numpy.zeros((1, 128)), out / "emb.hdf5")
    finally:
        os.umask(previous)
    assert (out / "emb.hdf5").stat().st_mode & 0o777 == 0o644


def test_the_test_suite_cannot_reach_the_internet():
    import requests

    with pytest.raises(requests.ConnectionError, match="tests may not reach www.idiap.ch"):
        requests.get("https://www.idiap.ch/", timeout=1)
