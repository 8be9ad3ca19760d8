"""Where the original silently produced garbage, we raise or skip; checkpoints load strictly."""
import os
import pickle
import warnings

import h5py
import numpy
import pytest
import torch

from bob.learn.pytorch import CheckpointError, UnsafeCheckpointError
from bob.learn.pytorch.architectures.DltResNet import dltresnet34
from bob.learn.pytorch.architectures.ResNet import resnet34
from bob.learn.pytorch.architectures.utils import FORWARD_MODES
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor, ResNetExtractor, spectrogram
from bob.learn.pytorch import pretrained
from bob.learn.pytorch.preprocessor.audio.DltResNet import _legacy_device
from bob.learn.pytorch.embedding import plan_chunks

from .conftest import load_fixture

MIN_FRAMES = pretrained.get("dltresnet34").min_frames
MIN_SAMPLES = 400 + (MIN_FRAMES - 1) * 160  # 6160 samples = 37 frames at 16 kHz


@pytest.fixture(scope="module")
def noise():
    """3 s of int16 noise at 16 kHz and its golden DltResNet embedding."""
    data = load_fixture("audio_noise16k_int16_3s")
    return data["data"], data["emb_drn"]


# -- short audio and chunks --------------------------------------------------------------------


def test_minimum_length_is_37_frames(drn_extractor, noise):
    samples, _ = noise
    embedding = drn_extractor((16000, samples[:MIN_SAMPLES]))
    assert numpy.all(numpy.isfinite(embedding))
    with pytest.raises(ValueError, match=r"audio too short: 0\.385 s .*36 frames.*at least 37 frames.*6160 samples"):
        drn_extractor((16000, samples[: MIN_SAMPLES - 1]))


@pytest.mark.parametrize("n_samples", [1, 399, 400, 4800, 6000])
def test_short_audio_raises_instead_of_nan(drn_extractor, noise, n_samples):
    with pytest.raises(ValueError, match="at least 37 frames"):
        drn_extractor((16000, noise[0][:n_samples]))


def test_short_audio_at_another_rate_is_judged_after_resampling(drn_extractor, noise):
    # 3079 samples at 8 kHz -> 6158 at 16 kHz: too short; 3080 -> 6160: enough.
    assert drn_extractor((8000, noise[0][:3080])).shape == (1, 128)
    with pytest.raises(ValueError, match="at least 37 frames"):
        drn_extractor((8000, noise[0][:3079]))


def test_trailing_chunk_too_short_for_the_network_is_dropped(drn_extractor):
    specs = load_fixture("extract_T1000")["specs"]
    # 333 frames, L=100: the original computed a 33-frame chunk as a NaN row.
    assert plan_chunks(333, 100, 30)[-1] == (300, 333)
    result = drn_extractor.extract_embeddings(drn_extractor.network, specs[:333], 100)
    expected = drn_extractor.extract_embeddings(drn_extractor.network, specs[:300], 100)
    assert result.shape == (3, 128)
    numpy.testing.assert_array_equal(result, expected)


def test_trailing_chunk_of_37_frames_is_kept(drn_extractor):
    specs = load_fixture("extract_T1000")["specs"]
    result = drn_extractor.extract_embeddings(drn_extractor.network, specs[:337], 100)
    assert result.shape == (4, 128)
    assert numpy.all(numpy.isfinite(result))


@pytest.mark.parametrize("L", [1, 20, 36])
def test_chunks_all_too_short_raise(drn_extractor, L):
    specs = load_fixture("extract_T300")["specs"]
    with pytest.raises(ValueError, match=f"no chunk .* has the 37 frames .*L={L}"):
        drn_extractor.extract_embeddings(drn_extractor.network, specs, L)


def test_spectrogram_too_short_for_the_network_raises(drn_extractor):
    specs = load_fixture("extract_T300")["specs"]
    with pytest.raises(ValueError, match="36-frame spectrogram"):
        drn_extractor.extract_embeddings(drn_extractor.network, specs[:36], 0)


@pytest.mark.parametrize("name, value", [("L", -1), ("min_length", -5), ("L", 2.5), ("batch_size", 0)])
def test_negative_or_fractional_counts_raise(drn_extractor, name, value):
    specs = load_fixture("extract_T300")["specs"]
    arguments = {"L": 0, "batch_size": 1, "min_length": 30, name: value}
    with pytest.raises(ValueError, match=name):
        drn_extractor.extract_embeddings(drn_extractor.network, specs, **arguments)


@pytest.mark.parametrize("bins", [129, 256, 273, 513])
def test_wrong_number_of_frequency_bins_raises(drn_extractor, bins):
    with pytest.raises(ValueError, match=f"specs has {bins} frequency bins; the networks need 257"):
        drn_extractor.extract_embeddings(drn_extractor.network, numpy.ones((100, bins)), 0)


@pytest.mark.parametrize("bins", [257, 272])
def test_accepted_frequency_bins(drn_extractor, bins):
    specs = numpy.random.RandomState(0).rand(100, bins)
    assert drn_extractor.extract_embeddings(drn_extractor.network, specs, 0).shape == (1, 128)


def test_empty_spectrogram_raises(drn_extractor):
    with pytest.raises(ValueError, match="no frames"):
        drn_extractor.extract_embeddings(drn_extractor.network, numpy.zeros((0, 257)), 0)


def test_spectrogram_shorter_than_a_window_raises():
    with pytest.raises(ValueError, match="399 samples is shorter than one window of 400 samples"):
        spectrogram(numpy.ones(399), 16000)
    assert spectrogram(numpy.ones(559), 16000).shape == (1, 257)
    assert spectrogram(numpy.ones(560), 16000).shape == (2, 257)


# -- accepted input forms ------------------------------------------------------------------------


def test_int_and_float_dtypes_agree(drn_extractor, noise):
    samples, expected = noise
    for converted in (samples.astype(numpy.int32), samples.astype(numpy.float32), samples.astype(numpy.float64)):
        numpy.testing.assert_allclose(drn_extractor((16000, converted)), expected, rtol=0, atol=1e-5)


def test_float_audio_in_unit_range_is_scaled_like_int16(drn_extractor, noise):
    samples, expected = noise
    unit = (samples / 32768.0).astype(numpy.float32)
    numpy.testing.assert_allclose(drn_extractor((16000, unit)), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", ["column", "row", "list"])
def test_mono_shapes_and_lists_are_accepted(drn_extractor, noise, shape):
    samples, expected = noise
    converted = {"column": samples[:, None], "row": samples[None, :], "list": samples.tolist()}[shape]
    numpy.testing.assert_array_equal(drn_extractor((16000, converted)), drn_extractor((16000, samples)))


def test_numpy_integer_rate_is_accepted(drn_extractor, noise):
    samples, expected = noise
    numpy.testing.assert_allclose(drn_extractor((numpy.int64(16000), samples)), expected, rtol=0, atol=1e-5)
    numpy.testing.assert_allclose(drn_extractor((16000.0, samples)), expected, rtol=0, atol=1e-5)


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "samples, message",
    [
        (numpy.zeros((2, 16000), numpy.int16), r"audio must be mono.*got shape \(2, 16000\)"),
        (numpy.zeros((16000, 2), numpy.int16), r"audio must be mono.*got shape \(16000, 2\)"),
        (numpy.zeros((2, 2, 8000)), r"audio must be mono.*got shape \(2, 2, 8000\)"),
        (numpy.array(3.0), r"^audio samples must be an array of samples, got the single number 3\.0; "),
        (numpy.int16(5), r"^audio samples must be an array of samples, got the single number 5; "),
        (numpy.zeros(0, numpy.int16), r"audio is empty"),
        (numpy.full(16000, numpy.nan), r"16000 NaN or infinite sample"),
        (numpy.r_[numpy.zeros(8000), numpy.inf, numpy.zeros(7999)], r"1 NaN or infinite sample"),
    ],
)
def test_bad_samples_raise_value_error(drn_extractor, samples, message):
    with pytest.raises(ValueError, match=message):
        drn_extractor((16000, samples))


@pytest.mark.parametrize(
    "samples",
    [numpy.array(["a"] * 8000), numpy.zeros(8000, dtype=complex), numpy.zeros(8000, dtype=bool), [None] * 8000],
)
def test_non_numeric_samples_raise_type_error(drn_extractor, samples):
    with pytest.raises(TypeError, match="audio samples must be integers or floats"):
        drn_extractor((16000, samples))


@pytest.mark.parametrize(
    "rate, message",
    [
        (0, "positive number of Hz, got 0"),
        (-16000, "positive number of Hz, got -16000"),
        (float("nan"), "positive number of Hz, got nan"),
        (float("inf"), "positive number of Hz, got inf"),
        (15999.5, "whole number of Hz, got 15999.5"),
        ("16000", r"positive number of Hz, got '16000' \(str\)"),
        (None, r"positive number of Hz, got None"),
        (True, r"positive number of Hz, got True"),
    ],
)
def test_bad_rates_raise_value_error(drn_extractor, noise, rate, message):
    with pytest.raises(ValueError, match=message):
        drn_extractor((rate, noise[0]))


@pytest.mark.parametrize("audio", [numpy.zeros(16000), "audio.wav", (16000,), (16000, numpy.zeros(8000), 1), 5])
def test_audio_not_a_pair_raises_type_error(drn_extractor, audio):
    with pytest.raises(TypeError, match=r"audio must be a \(rate, samples\) pair"):
        drn_extractor(audio)


@pytest.mark.parametrize("annotations", ["left", 3, [1, 2]])
def test_annotations_of_unexpected_type_raise(drn_extractor, noise, annotations):
    with pytest.raises(TypeError, match="annotations must be None or a dict"):
        drn_extractor((16000, noise[0]), annotations)


def test_annotations_dict_is_accepted_and_ignored(drn_extractor, noise):
    samples, expected = noise
    numpy.testing.assert_array_equal(drn_extractor((16000, samples), {"speech": [0, 1]}), drn_extractor((16000, samples)))


# -- storage ----------------------------------------------------------------------------------------


def test_write_read_round_trip_matches_the_original_file_layout(drn_extractor, noise, tmp_path):
    embedding = drn_extractor((16000, noise[0]))
    path = tmp_path / "sub" / "emb.hdf5"
    drn_extractor.write_data(embedding, str(path))
    assert sorted(os.listdir(path.parent)) == ["emb.hdf5"]
    with h5py.File(path, "r") as hdf5:
        assert list(hdf5.keys()) == ["feats"]
        dataset = hdf5["feats"]
        assert dataset.dtype == numpy.float64 and dataset.shape == (1, 128)
        assert dataset.chunks is None and dataset.compression is None and len(dataset.attrs) == 0
    restored = drn_extractor.read_data(str(path))
    assert restored.dtype == numpy.float64
    numpy.testing.assert_array_equal(restored, embedding.astype(numpy.float64))


@pytest.mark.parametrize(
    "data, dtype", [(None, "object"), (numpy.array([None, 1.0]), "object"), (numpy.ones(3, complex), "complex128")]
)
def test_write_data_refuses_what_is_not_real_numbers_and_writes_nothing(drn_extractor, tmp_path, data, dtype):
    with pytest.raises(TypeError, match=rf"^embeddings must be an array of real numbers, got \w+ of dtype {dtype}$"):
        drn_extractor.write_data(data, str(tmp_path / "emb.hdf5"))
    assert list(tmp_path.iterdir()) == [tmp_path / "home"]


def test_read_data_errors_are_clear(drn_extractor, tmp_path):
    with pytest.raises(FileNotFoundError, match="no embedding file"):
        drn_extractor.read_data(str(tmp_path / "missing.hdf5"))
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(OSError, match="is not an HDF5 file"):
        drn_extractor.read_data(str(tmp_path / "text.hdf5"))
    with h5py.File(tmp_path / "other.hdf5", "w") as hdf5:
        hdf5["data"] = numpy.zeros(3)
    with pytest.raises(ValueError, match="has no dataset 'feats'"):
        drn_extractor.read_data(str(tmp_path / "other.hdf5"))


# -- checkpoints --------------------------------------------------------------------------------------


def test_network_is_in_eval_mode_with_checkpoint_weights(drn_extractor, drn_file):
    network = drn_extractor.network
    assert not any(module.training for module in network.modules())
    assert network.net_type == "emb"
    stored = torch.load(drn_file, weights_only=True)["state_dict"]
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, stored[f"module.{key}"], rtol=0, atol=0)


def _save_state(tmp_path, state, name="edited.pth.tar"):
    path = tmp_path / name
    torch.save({"state_dict": state, "epoch": 1}, path)
    return str(path)


def test_missing_and_unexpected_keys_are_named(drn_file, tmp_path):
    state = torch.load(drn_file, weights_only=True)["state_dict"]
    state.pop("module.em.weight")
    state["module.extra.weight"] = torch.zeros(2)
    path = _save_state(tmp_path, state)
    extractor = DltResNetExtractor(path)
    with pytest.raises(CheckpointError) as error:
        extractor.network
    message = str(error.value)
    assert path in message and "missing keys: em.weight" in message and "unexpected keys: extra.weight" in message


def test_other_num_classes_is_reported_as_shape_mismatch(drn_file):
    with pytest.raises(CheckpointError, match=r"shape mismatches: fc.weight \(file \(1211, 1024\), network \(1000, 1024\)\)"):
        DltResNetExtractor(str(drn_file), num_classes=1000).network


def test_other_bn_dim_is_reported(drn_file):
    with pytest.raises(CheckpointError, match=r"em.weight \(file \(128, 1024\), network \(64, 1024\)\).*num_classes and bn_dim"):
        DltResNetExtractor(str(drn_file), bn_dim=64).network


def test_checkpoint_of_the_other_architecture_is_refused_with_a_hint(drn_file, rn_file):
    with pytest.raises(CheckpointError, match="missing keys: conv2.weight.*It looks like a ResNet-34 checkpoint: use network='resnet34'"):
        DltResNetExtractor(str(rn_file)).network
    with pytest.raises(CheckpointError, match="unexpected keys: conv2.weight.*It looks like a DltResNet-34 checkpoint: use network='dltresnet34'"):
        ResNetExtractor(str(drn_file)).network


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"hello, I am a text file\n", r"is not a PyTorch checkpoint: it begins with b'hello, I am a te', not with"),
        (b"<!DOCTYPE html><html>", r"it begins with b'<!DOCTYPE html><', not with.*a web page"),
        (b"PK\x03\x04" + b"\x00" * 100, "not a readable PyTorch checkpoint"),
    ],
)
def test_unreadable_files_raise_checkpoint_error(tmp_path, content, message):
    path = tmp_path / "bad.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        DltResNetExtractor(str(path)).network


def test_truncated_checkpoint_raises_checkpoint_error(drn_file, tmp_path):
    path = tmp_path / "truncated.pth.tar"
    path.write_bytes(drn_file.read_bytes()[: 10_000_000])
    with pytest.raises(CheckpointError, match="truncated.pth.tar is not a readable PyTorch checkpoint"):
        DltResNetExtractor(str(path)).network


def test_zip_that_is_not_a_checkpoint_is_refused(tmp_path):
    import zipfile

    path = tmp_path / "archive.pth.tar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        DltResNetExtractor(str(path)).network


def test_tar_that_is_not_a_checkpoint_reaches_torch_and_is_refused(tmp_path):
    """torch.load still reads its oldest (tar) format, so a tar archive passes the header check."""
    import tarfile

    (tmp_path / "notes.txt").write_text("hello")
    path = tmp_path / "archive.pth.tar"
    with tarfile.open(path, "w") as archive:
        archive.add(tmp_path / "notes.txt", arcname="notes.txt")
    with pytest.raises(CheckpointError, match=r"archive.pth.tar is not a readable PyTorch checkpoint \(truncated or damaged\?\)"):
        DltResNetExtractor(str(path)).network


def test_checkpoint_without_tensors_is_refused(tmp_path):
    path = tmp_path / "dict.pth.tar"
    torch.save({"epoch": 3, "arch": "dltresnet34"}, path)
    with pytest.raises(CheckpointError, match="is not a state dict: entry 'epoch' holds int"):
        DltResNetExtractor(str(path)).network


class _Payload:
    """Pickles to a call of os.system: what a hostile checkpoint would carry."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_code_running_pickle_is_refused_and_never_runs(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Payload(f"touch {sentinel}")}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"contains (posix|os)\.system.*trust_checkpoint=True"):
        DltResNetExtractor(str(path)).network
    assert not sentinel.exists()


def test_plain_pickle_file_is_refused_and_never_runs(tmp_path, recwarn):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_Payload(f"touch {sentinel}")))
    with pytest.raises(CheckpointError, match=r"safe \(weights-only\) reader stopped at Unsupported operand \d+\. "):
        DltResNetExtractor(str(path)).network
    assert not sentinel.exists()
    # the error says what is wrong; torch's advice to file an issue about the pickle protocol is not shown
    assert [str(warning.message) for warning in recwarn] == []


def test_checkpoint_cut_after_its_header_says_so(drn_file, tmp_path):
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(drn_file.read_bytes()[:100])
    with pytest.raises(CheckpointError) as error:
        DltResNetExtractor(str(path)).network
    assert str(error.value).startswith(f"{path} is not a readable PyTorch checkpoint (truncated or damaged?): ")
    assert str(error.value).endswith("; replace it with a complete copy of the model file")


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_checkpoint_with_non_finite_weights_is_refused(drn_file, tmp_path, bad_value):
    damaged = {key: value.clone() for key, value in torch.load(drn_file, weights_only=True)["state_dict"].items()}
    damaged["module.layer2.0.conv1.weight"][0, 0, 0, 0] = bad_value  # the reference file keeps DataParallel's prefix
    path = tmp_path / "diverged.pth.tar"
    torch.save({"state_dict": damaged}, path)
    with pytest.raises(CheckpointError, match=r"holds NaN or infinite values in 1 tensor\(s\) \(layer2\.0\.conv1\.weight\)"):
        DltResNetExtractor(str(path)).network


def test_missing_explicit_model_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth.tar"):
        DltResNetExtractor(str(tmp_path / "nothing.pth.tar"))


def test_file_present_at_the_default_path_is_used(drn_file, tmp_path, monkeypatch, noise):
    monkeypatch.setattr(pretrained, "DATA_DIR", str(tmp_path))
    os.symlink(drn_file, tmp_path / "drn34.pth.tar")
    extractor = DltResNetExtractor()
    assert extractor.model_path == str(tmp_path / "drn34.pth.tar")
    numpy.testing.assert_allclose(extractor((16000, noise[0])), noise[1], rtol=0, atol=1e-5)


# -- devices, modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_classes": "1211"}, "num_classes must be a positive integer, got '1211' (str)"),
        ({"num_classes": 0}, "num_classes must be a positive integer, got 0 (int)"),
        ({"bn_dim": 128.0}, "bn_dim must be a positive integer, got 128.0 (float)"),
    ],
)
def test_network_sizes_must_be_positive_integers(drn_file, arguments, message):
    with pytest.raises(ValueError) as error:
        DltResNetExtractor(str(drn_file), **arguments)
    assert str(error.value) == message


def test_numpy_integer_network_sizes_are_taken(drn_file):
    extractor = DltResNetExtractor(str(drn_file), num_classes=numpy.int64(1211))
    assert extractor.num_classes == 1211 and type(extractor.num_classes) is int


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")
def test_cuda_device_without_cuda_is_refused_before_the_model_file_is_read(drn_file):
    with pytest.raises(RuntimeError, match=r"^device 'cuda' asked for, but PyTorch finds no CUDA device .*use device='cpu'$"):
        DltResNetExtractor(str(drn_file), device="cuda")


def test_cuda_device_index_beyond_the_devices_is_refused(drn_file, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match=r"^device 'cuda:2' asked for, but PyTorch finds 2 CUDA device\(s\): cuda:0 to cuda:1$"):
        DltResNetExtractor(str(drn_file), device="cuda:2")


def test_cuda_flag_maps_to_cuda_device_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="device='cuda'"):
        assert _legacy_device(None, 1) == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _legacy_device(None, 0) is None
        assert _legacy_device("cpu", 0) == "cpu"
    with pytest.raises(ValueError, match="conflicts"), pytest.warns(DeprecationWarning):
        _legacy_device("cpu", 1)
    with pytest.raises(ValueError, match="cuda_flag must be 0 or 1"):
        _legacy_device(None, 2)


def test_resnet_extractor_refuses_use_res_false():
    with pytest.raises(ValueError, match="ResNetExtractor always uses the ResNet-34"):
        ResNetExtractor(test=True, use_res=False)


@pytest.mark.parametrize("builder", [dltresnet34, resnet34])
def test_forward_modes(builder):
    network = builder(num_classes=10, tp="emb").eval()
    x = torch.randn(2, 1, 100, 257)
    expected = {"prefc": 1024, "cls": 10, "cls2": 10, "cls3": 10, "emb": 128, "emb2": 128}
    if builder is resnet34:
        expected["emb2"] = 1024
        del expected["cls3"]
    with torch.inference_mode():
        for mode, size in expected.items():
            network.net_type = mode
            assert network(x).shape == (2, size), mode
        network.net_type = "nonsense"
        with pytest.raises(ValueError, match="unknown forward type 'nonsense'"):
            network(x)
    with pytest.raises(ValueError, match="unknown forward type"):
        builder(tp="embedding")
    assert set(expected) <= set(FORWARD_MODES)


def test_resnet_has_no_cls3():
    with pytest.raises(ValueError, match="ResNet has no 'cls3'"):
        resnet34(tp="cls3")


def test_imagenet_pretrained_resnet_is_refused():
    with pytest.raises(ValueError, match="ImageNet"):
        resnet34(pretrained=True)


def test_cls3_runs_the_body_once():
    network = dltresnet34(num_classes=10, tp="cls3").eval()
    calls = []
    network.conv1.register_forward_hook(lambda *args: calls.append(1))
    with torch.inference_mode():
        network(torch.randn(1, 1, 80, 257))
    assert calls == [1]


def test_embeddings_have_unit_norm_and_are_deterministic(drn_extractor, noise):
    first = drn_extractor((16000, noise[0]))
    second = drn_extractor((16000, noise[0]))
    numpy.testing.assert_array_equal(first, second)
    assert numpy.linalg.norm(first) == pytest.approx(1.0, abs=1e-6)


def test_pickled_extractor_drops_the_network(drn_extractor, noise):
    drn_extractor.network  # loaded
    payload = pickle.dumps(drn_extractor)
    assert len(payload) < 100_000
    clone = pickle.loads(payload)
    numpy.testing.assert_array_equal(clone((16000, noise[0])), drn_extractor((16000, noise[0])))
