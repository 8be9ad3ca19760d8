"""Devices the machine cannot use are named as the culprit, never the model file."""
import numpy
import pytest
import torch

from bob.learn.pytorch import CheckpointError
from bob.learn.pytorch.devices import check_device
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor


@pytest.mark.parametrize(
    "device, message",
    [
        ("cpu:1", "device 'cpu:1': the CPU has no index other than 0; use device='cpu'"),
        ("meta", "device 'meta' holds no data and cannot compute embeddings"),
        ("ipu", "device type 'ipu' is not supported by the extractors; use one of cpu, cuda, mps, xpu"),
        ("gpu", "device 'gpu' is not a device torch knows"),
        (3, "device must be a text such as 'cpu' or 'cuda:0', or a torch.device; got 3"),
    ],
)
def test_devices_that_can_never_compute_are_value_errors(device, message):
    with pytest.raises(ValueError) as caught:
        check_device(device)
    assert message in str(caught.value)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="an Apple GPU is there")
def test_mps_off_a_mac_is_a_runtime_error_about_the_device():
    with pytest.raises(RuntimeError, match=r"device 'mps' asked for, but PyTorch finds no Apple GPU \(MPS\)"):
        check_device("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")
def test_cuda_without_a_gpu_is_a_runtime_error_about_the_device():
    with pytest.raises(RuntimeError, match="device 'cuda:1' asked for, but PyTorch finds no CUDA device"):
        check_device("cuda:1")


def test_usable_devices_are_returned():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu", 0)) == torch.device("cpu", 0)


@pytest.mark.parametrize("device", ["cpu:1", "mps", "meta"])
def test_the_extractor_blames_the_device_not_the_model_file(drn_file, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("an Apple GPU is there")
    with pytest.raises((ValueError, RuntimeError)) as caught:
        DltResNetExtractor(str(drn_file), device=device).network
    assert not isinstance(caught.value, CheckpointError)
    assert f"device '{device}'" in str(caught.value)


def test_a_model_path_given_as_bytes_is_a_path(drn_file, drn_extractor):
    extractor = DltResNetExtractor(bytes(drn_file))
    assert extractor.model_path == str(drn_file)
    audio = (16000, numpy.random.RandomState(3).randint(-3000, 3000, 16000).astype(numpy.int16))
    numpy.testing.assert_array_equal(extractor(audio), drn_extractor(audio))


def test_a_model_path_of_another_type_is_a_type_error():
    with pytest.raises(TypeError, match="a model file must be given as a path .str or os.PathLike., not int"):
        DltResNetExtractor(3)
