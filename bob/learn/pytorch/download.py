"""Downloading a network's weight file: :func:`~bob.learn.pytorch.fetch.fetch` with the network's check.

The generic fetcher (:mod:`bob.learn.pytorch.fetch`) bounds the download,
checks its size and sha256 and writes the file whole or not at all. This
module adds what only a network's record knows: the cap on the bytes (a
multiple of the size of its weights), the check that the file is a safe
checkpoint holding exactly the parameter names the network expects, and
errors (:class:`~bob.learn.pytorch.errors.ModelDownloadError`) that name the
``bob config set`` command to use a copy obtained by other means, or the
setting that changes the bound that was hit.
"""
import dataclasses
import errno
import functools
import math
import os
from typing import List, Optional, Set

from .atomic import not_regular_file_reason
from .checkpoint import clean_state_dict, read_checkpoint
from .errors import CheckpointError, ModelDownloadError
from .fetch import MAX_SECONDS, DeadlineError, FetchError, FetchOptions, RateError, fetch, redact_url
from .pretrained import PretrainedNetwork, parameter_shapes
from .weights import DEADLINE_KEY, MIN_RATE_KEY

__all__ = [
    "DownloadOptions", "DEADLINE_KEY", "MIN_RATE_KEY", "MAX_SECONDS", "download_model", "expected_parameter_names",
    "model_size_cap",
]

#: How patiently to download, and how much (:class:`~bob.learn.pytorch.fetch.FetchOptions`);
#: ``max_bytes=None`` means :func:`model_size_cap` of the network.
DownloadOptions = FetchOptions

#: The bytes accepted from a server, as a multiple of the size of the model's weights.
SIZE_CAP_FACTOR = 4
#: errno values meaning "this folder cannot be written" (permissions, read-only file system).
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
#: What to change when a bound was hit, by the class of the fetcher's error.
_HINTS = {
    DeadlineError: f"allow more time with 'bob config set {DEADLINE_KEY} SECONDS'",
    RateError: f"accept a slower server with 'bob config set {MIN_RATE_KEY} KB_PER_SECOND' (0 accepts any rate)",
}


#: Bytes per stored number: the released weights are float32 (batch-norm counters, int64, are a few numbers).
_BYTES_PER_NUMBER = 4


def expected_parameter_names(record: PretrainedNetwork) -> Set[str]:
    """State-dict keys (without ``module.``) of the network ``record.build()`` makes."""
    return set(parameter_shapes(record))


def model_size_cap(record: PretrainedNetwork) -> int:
    """Most bytes accepted for a download of ``record``: :data:`SIZE_CAP_FACTOR` times its weights, plus 1 MiB.

    The released files hold the weights and a few numbers, so a larger body
    is not the model (an endless body, or a compressed one that expands without end).
    """
    numbers = sum(math.prod(shape) for shape in parameter_shapes(record).values())
    return SIZE_CAP_FACTOR * _BYTES_PER_NUMBER * numbers + (1 << 20)


def _listing(names: List[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _check_weights(record: PretrainedNetwork, trust: bool, path: str) -> None:
    """Refuse (``ValueError``) a file that is not a safe checkpoint of ``record``'s network."""
    try:
        names = set(clean_state_dict(read_checkpoint(path, map_location="cpu", trust=trust), source="the downloaded file"))
    except CheckpointError as error:
        raise ValueError(f"the downloaded file is not a usable checkpoint ({error})") from error
    expected = expected_parameter_names(record)
    missing, unexpected = sorted(expected - names), sorted(names - expected)
    if missing or unexpected:
        details = "; ".join(
            f"{label}: {_listing(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys
        )
        raise ValueError(f"the downloaded file does not hold {record.title} weights ({details})")


def _set_command(record: PretrainedNetwork) -> str:
    return f"bob config set {record.path_key} /path/to/model.pth.tar"


def _download_error(record: PretrainedNetwork, url: str, cause: str) -> ModelDownloadError:
    return ModelDownloadError(
        f"could not download the {record.title} model from {url}: {cause}. "
        f"To use a copy obtained by other means, run: {_set_command(record)}"
    )


def _unwritable_error(record: PretrainedNetwork, folder: str, error: OSError) -> ModelDownloadError:
    return ModelDownloadError(
        f"cannot write the {record.title} model file into {folder} ({error.strerror or error}): the folder is "
        "not writable (for instance a read-only site-packages). Choose a writable location with "
        f"'{_set_command(record)}' (the model is downloaded there on first use, or put a copy there yourself)."
    )


def _prepare_folder(record: PretrainedNetwork, folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        if error.errno in _UNWRITABLE:
            raise _unwritable_error(record, folder, error) from error
        raise ModelDownloadError(
            f"cannot create the folder {folder} for the {record.title} model ({error.strerror or error}); "
            f"choose another location with '{_set_command(record)}'"
        ) from error


def download_model(
    record: PretrainedNetwork,
    target: str,
    url: Optional[str] = None,
    *,
    sha256: Optional[str] = None,
    trust: bool = False,
    options: Optional[DownloadOptions] = None,
) -> str:
    """Download ``record``'s weights to ``target`` unless the file is already there.

    Parameters
    ----------
    record : PretrainedNetwork
        Which model; gives the expected parameter names, the size cap and the setting to name in errors.
    target : str
        Final path of the file. Its folder is created if needed.
    url : str, optional
        Where to download from (default ``record.url``).
    sha256 : str, optional
        Expected hex digest of the file; not checked when None.
    trust : bool
        Validate the file with full unpickling (only for sources you trust).
    options : DownloadOptions, optional
        Timeouts, retries, bounds and progress display.

    Returns
    -------
    str
        ``target``, which now exists and is complete.

    Raises
    ------
    ModelDownloadError
        If the folder cannot be written, ``target`` is not a regular file (a device,
        a FIFO: never replaced), or the download or its validation fails. Nothing
        is left in the folder in that case.
    """
    url = record.url if url is None else url
    options = DownloadOptions() if options is None else options
    if options.max_bytes is None:
        options = dataclasses.replace(options, max_bytes=model_size_cap(record))
    target = os.path.abspath(target)
    reason = not_regular_file_reason(target)
    if reason:
        raise ModelDownloadError(f"will not download the {record.title} model onto {target}: it is {reason}")
    folder = os.path.dirname(target)
    _prepare_folder(record, folder)
    check = functools.partial(_check_weights, record, trust)
    try:
        return fetch(url, target, sha256=sha256, check=check, options=options, description="model file")
    except FetchError as error:
        hint = next((f"; {text}" for kind, text in _HINTS.items() if isinstance(error, kind)), "")
        cause = None if redact_url(url) != url else error.__cause__  # a cause may quote the credentials
        raise _download_error(record, error.url, error.cause + hint) from cause
    except OSError as error:
        if error.errno in _UNWRITABLE:
            raise _unwritable_error(record, folder, error) from error
        raise _download_error(record, redact_url(url), str(error)) from error
