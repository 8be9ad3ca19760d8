"""Checking a device before anything is loaded onto it.

A device that torch can name but this machine cannot use (``cpu:1``, ``mps``
on Linux, ``meta``, ``cuda`` without a GPU) would otherwise fail deep inside
the checkpoint reader, whose error then blames the model file.
"""
from typing import Callable, Dict, Union

import torch

__all__ = ["check_device", "SUPPORTED_TYPES"]

DeviceLike = Union[str, torch.device]

#: Device types the extractors can run on (when the machine has them).
SUPPORTED_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(device: DeviceLike) -> torch.device:
    """Return ``device`` as a :class:`torch.device` if the extractors can run on it here.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    ValueError
        If torch does not know the name, or the device can never compute
        embeddings (``meta``, a CPU index other than 0, an unsupported type).
    RuntimeError
        If the device is of a supported type but this machine or this build of
        PyTorch cannot reach it (no CUDA device, no Apple GPU, an index beyond
        the devices present).

    Examples
    --------
    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("meta")
    Traceback (most recent call last):
    ValueError: device 'meta' holds no data and cannot compute embeddings; use device='cpu' or 'cuda'
    """
    parsed = _parse(device)
    if parsed.type == "meta":
        raise ValueError(f"device '{parsed}' holds no data and cannot compute embeddings; use device='cpu' or 'cuda'")
    if parsed.type not in SUPPORTED_TYPES:
        raise ValueError(
            f"device type '{parsed.type}' is not supported by the extractors; use one of {', '.join(SUPPORTED_TYPES)}"
        )
    if parsed.type == "cpu":
        if parsed.index not in (None, 0):
            raise ValueError(f"device '{parsed}': the CPU has no index other than 0; use device='cpu'")
        return parsed
    _require_available(parsed)
    return parsed


def _parse(device: DeviceLike) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device must be a text such as 'cpu' or 'cuda:0', or a torch.device; got {device!r}")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"device {device!r} is not a device torch knows ({message})") from None


def _backend_of(device_type: str):
    return getattr(torch, device_type, None) if device_type != "mps" else getattr(torch.backends, "mps", None)


_NAMES: Dict[str, str] = {"cuda": "CUDA device", "mps": "Apple GPU (MPS)", "xpu": "Intel GPU (XPU)"}


def _require_available(device: torch.device) -> None:
    """Raise ``RuntimeError`` if this PyTorch cannot reach ``device`` (of type cuda, mps or xpu)."""
    backend = _backend_of(device.type)
    is_available: Callable[[], bool] = getattr(backend, "is_available", lambda: False)
    what = _NAMES[device.type]
    if not is_available():
        raise RuntimeError(
            f"device '{device}' asked for, but PyTorch finds no {what} (a build of torch without it, or no "
            "such device visible to this process); use device='cpu'"
        )
    if device.index is None or device.type == "mps":
        if device.type == "mps" and device.index not in (None, 0):
            raise RuntimeError(f"device '{device}' asked for, but there is one Apple GPU: use device='mps'")
        return
    count = backend.device_count()
    if device.index >= count:
        raise RuntimeError(
            f"device '{device}' asked for, but PyTorch finds {count} {what}(s): "
            f"{device.type}:0 to {device.type}:{count - 1}"
        )
