"""Reading model files safely and loading them strictly.

``torch.load`` runs with ``weights_only=True``: tensors, containers and plain
Python values only. The numpy scalars and dtypes that old training scripts
stored beside the weights (e.g. a ``numpy.float64`` accuracy) are allowed for
that one call; anything else that would need full unpickling is refused,
unless the caller explicitly trusts the file.
"""
import os
import pickle
import re
import socket
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Tuple, Union

import numpy
import torch

from .errors import CheckpointError, UnsafeCheckpointError
from .pretrained import records as registered_networks

__all__ = ["read_checkpoint", "clean_state_dict", "load_state_dict_strictly", "missing_model_file_message", "NUMPY_SAFE_GLOBALS"]

PathLike = Union[str, "os.PathLike[str]"]


def _numpy_safe_globals() -> List[Any]:
    """numpy's scalar reconstructor and dtype classes, under both numpy 1 and numpy 2 names."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy < 1.26
        from numpy.core.multiarray import scalar
    allowed: List[Any] = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        numpy.dtype,
    ]
    dtypes = getattr(numpy, "dtypes", None)
    if dtypes is not None:
        allowed.extend(
            getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType") and name != "StringDType"
        )
    return allowed


#: Globals allowed while reading a checkpoint: numpy scalars and dtypes only.
NUMPY_SAFE_GLOBALS = _numpy_safe_globals()

_UNSUPPORTED_GLOBAL = re.compile(r"unsupported (?:global: )?(?:GLOBAL|class) ([\w.]+)", re.IGNORECASE)
#: The reason torch's weights-only reader gives, after its general advice.
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")
#: How the files torch.save writes begin: a zip archive, or (legacy formats) a pickle or a tar archive.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_TAR_MAGIC, _TAR_MAGIC_OFFSET = b"ustar", 257


def _refuse_unsafe(path: PathLike, error: pickle.UnpicklingError) -> UnsafeCheckpointError:
    found = _UNSUPPORTED_GLOBAL.search(str(error))
    offending = found.group(1) if found else "an object that is not a tensor"
    return UnsafeCheckpointError(
        f"refusing to load {os.fspath(path)}: it contains {offending}, which only full unpickling can "
        "rebuild, and unpickling can run arbitrary code. If you trust this file, pass "
        "trust_checkpoint=True; otherwise obtain a clean checkpoint."
    )


def read_checkpoint(path: PathLike, map_location: Any = "cpu", trust: bool = False) -> Any:
    """Read a model file with ``weights_only`` semantics and return what it holds.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.pth`` / ``.pth.tar`` file written by ``torch.save`` (zip or legacy format).
    map_location : str or torch.device
        Where tensors are placed.
    trust : bool
        Unpickle arbitrary objects. Only for files from a source you trust.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    UnsafeCheckpointError
        If the file names code that full unpickling would run (a class or
        function) and ``trust`` is False.
    CheckpointError
        If the file is empty, truncated, not a PyTorch checkpoint, or holds
        what the safe reader cannot read.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(missing_model_file_message(path))
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"model file {os.fspath(path)} is empty (0 bytes); delete it and download it again")
    _check_header(path)
    try:
        if trust:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS), warnings.catch_warnings():
            # torch warns about any pickle protocol but 2 and asks for an issue to be filed; such a
            # file is not torch.save's, and the error raised below says what is wrong with it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise _unreadable(path, error) from error
        if _UNSUPPORTED_GLOBAL.search(str(error)):
            raise _refuse_unsafe(path, error) from None
        raise _unreadable_safely(path, error) from None
    except Exception as error:  # any other failure of the unpickler means the file is unusable
        raise _unreadable(path, error) from error


def _check_header(path: PathLike) -> None:
    """Refuse a file that does not begin as torch.save's files do (a web page, an archive of another kind...)."""
    with open(path, "rb") as stream:
        head = stream.read(512)
    tar = head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + len(_TAR_MAGIC)] == _TAR_MAGIC
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC) or tar):
        raise CheckpointError(
            f"{os.fspath(path)} is not a PyTorch checkpoint: it begins with {head[:16]!r}, not with the zip, "
            "pickle or tar header that torch.save writes (a web page or another kind of file?); replace it "
            "with the model file"
        )


def _unreadable(path: PathLike, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{os.fspath(path)} is not a readable PyTorch checkpoint (truncated or damaged?): {_first_line(error)}; "
        "replace it with a complete copy of the model file"
    )


def _unreadable_safely(path: PathLike, error: pickle.UnpicklingError) -> CheckpointError:
    """The weights-only reader stopped at something it does not know, which names no code to run."""
    found = _UNPICKLER_REASON.search(str(error))
    reason = found.group(1).strip() if found else "content it does not know"
    return CheckpointError(
        f"{os.fspath(path)} is not a readable PyTorch checkpoint: the safe (weights-only) reader stopped at "
        f"{reason}. The file is damaged, is another kind of pickle, or was saved in a form that only full "
        "unpickling reads; replace it with the model file (full unpickling, trust_checkpoint=True, is only "
        "for files from a source you trust)"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else f"{type(error).__name__} (no details)"


def clean_state_dict(content: Any, source: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """Unwrap ``{'state_dict': ...}``, strip DataParallel's ``module.`` prefix and check the values.

    Raises :class:`CheckpointError` if ``content`` holds no state dict, an
    entry that is not a tensor, or NaN or infinite values (a training run that
    diverged, or a damaged file), which would make every embedding NaN.

    >>> import torch
    >>> from bob.learn.pytorch.checkpoint import clean_state_dict
    >>> list(clean_state_dict({"state_dict": {"module.fc.bias": torch.zeros(1)}, "epoch": 3}))
    ['fc.bias']
    """
    state = content.get("state_dict", content) if isinstance(content, Mapping) else content
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            f"{source} holds no state dict (found {type(content).__name__}); expected a dict of tensors "
            "or a dict with a 'state_dict' entry"
        )
    cleaned: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source} is not a state dict: entry {key!r} holds {type(value).__name__}, not a tensor"
            )
        cleaned[key[len("module."):] if key.startswith("module.") else key] = value
    _check_finite(cleaned, source)
    return cleaned


def _check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    damaged = [
        key for key, value in state.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if damaged:
        raise CheckpointError(
            f"{source} holds NaN or infinite values in {len(damaged)} tensor(s) ({_listing(damaged)}): its "
            "training diverged or the file is damaged, and every embedding would be NaN; use another checkpoint"
        )


def _shape_mismatches(expected: Dict[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> List[str]:
    return [
        f"{key} (file {tuple(state[key].shape)}, network {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]


def _listing(names: List[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def load_state_dict_strictly(
    network: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    hint: Union[str, Callable[[], str]] = "",
) -> None:
    """Copy ``state`` into ``network``, refusing any missing, unexpected or misshapen key.

    ``hint`` is a text, or a function returning one that is called only when
    the state does not fit (a hint may be costly to work out).

    Raises
    ------
    CheckpointError
        Naming the file, the missing keys, the unexpected keys and the shape
        mismatches, followed by ``hint``.
    """
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = _shape_mismatches(expected, state)
    if missing or unexpected or misshapen:
        problems: List[Tuple[str, List[str]]] = [
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", misshapen),
        ]
        details = "; ".join(f"{label}: {_listing(names)}" for label, names in problems if names)
        hint = hint() if callable(hint) else hint
        raise CheckpointError(
            f"{source} does not fit {type(network).__name__}: {details}.{(' ' + hint) if hint else ''}"
        )
    network.load_state_dict(state, strict=True)


def missing_model_file_message(path: PathLike) -> str:
    """What to say when a model file that was resolved earlier is missing where it is opened.

    A pipeline resolves the model path in the process that starts it (``bob bio
    pipeline simple``), and every dask worker opens that same path, perhaps on
    another host, which may not see the file. The message names the host, the
    settings and the two ways to give every host the file.

    Parameters
    ----------
    path : str or os.PathLike
        The model file that does not exist.

    Returns
    -------
    str
        One paragraph, without a trailing full stop.

    Examples
    --------
    >>> message = missing_model_file_message("/models/drn34.pth.tar")
    >>> message.startswith("model file /models/drn34.pth.tar does not exist on host ")
    True
    """
    keys = [record.path_key for record in registered_networks()]
    return (
        f"model file {os.fspath(path)} does not exist on host {socket.gethostname()}. A pipeline resolves "
        f"its model file where it starts (setting {' or '.join(keys)}, else the package data folder) and "
        "every dask worker opens that same path: put the file in a folder that every host sees at that path "
        f"and run 'bob config set {keys[0]} PATH' (or the setting of the network you use), or run 'bob pytorch "
        "download-models' on each host beforehand, with the same setting"
    )
