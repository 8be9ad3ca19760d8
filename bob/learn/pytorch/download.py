"""Downloading a pretrained model file without ever leaving a bad file behind.

The file is streamed with ``requests`` into a unique temporary file beside the
target, checked (size against ``Content-Length``, sha256 when one is known,
and a safe load showing exactly the parameter names the network expects),
then renamed into place atomically. Connection errors, timeouts and 5xx
answers are retried a few times with exponential backoff. A lock file beside
the target makes concurrent processes (e.g. dask workers) download only once:
the others wait, then find the finished file. Temporary files left by a
download that was killed are removed by the next one.

Every failure removes the temporary file and raises
:class:`~bob.learn.pytorch.errors.ModelDownloadError` naming the URL, the
cause and the ``bob config set`` command that points to a copy obtained by
other means.
"""
import errno
import fcntl
import functools
import glob
import hashlib
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Iterator, List, Optional, Set

import requests

from .errors import CheckpointError, ModelDownloadError

if TYPE_CHECKING:  # the extractor module imports this one: no import cycle at run time
    from .preprocessor.audio.weights import PretrainedModel

__all__ = ["DownloadOptions", "download_model", "file_lock", "expected_parameter_names"]

logger = logging.getLogger(__name__)

#: errno values meaning "this folder cannot be written" (permissions, read-only file system).
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


@dataclass(frozen=True)
class DownloadOptions:
    """How patiently to download.

    Attributes
    ----------
    connect_timeout : float
        Seconds to wait for the connection to the server.
    read_timeout : float
        Seconds to wait for each piece of data (not for the whole file).
    attempts : int
        Tries in all; connection errors, timeouts, cut-off bodies and 5xx answers are retried.
    backoff : float
        Seconds before the first retry, doubled for each further one.
    chunk_size : int
        Bytes read and written at a time.
    progress : bool or None
        Draw a progress bar on standard error; None draws it only when standard
        error is a terminal. Without a bar, progress goes to the log.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    attempts: int = 3
    backoff: float = 1.0
    chunk_size: int = 1 << 20
    progress: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("download timeouts must be positive numbers of seconds")
        if self.attempts < 1:
            raise ValueError("download attempts must be at least 1")
        if self.backoff < 0 or self.chunk_size < 1:
            raise ValueError("download backoff must be >= 0 and chunk_size >= 1")


class _Failure(Exception):
    """A download problem worth reporting as it is."""


class _Retryable(_Failure):
    """A download problem that may go away on another try."""


def _set_command(record: "PretrainedModel") -> str:
    return f"bob config set {record.path_key} /path/to/model.pth.tar"


def _download_error(record: "PretrainedModel", url: str, cause: str) -> ModelDownloadError:
    return ModelDownloadError(
        f"could not download the {record.title} model from {url}: {cause}. "
        f"To use a copy obtained by other means, run: {_set_command(record)}"
    )


def _unwritable_error(record: "PretrainedModel", folder: str, error: OSError) -> ModelDownloadError:
    return ModelDownloadError(
        f"cannot write the {record.title} model file into {folder} ({error.strerror or error}): the folder is "
        "not writable (for instance a read-only site-packages). Choose a writable location with "
        f"'{_set_command(record)}' (the model is downloaded there on first use, or put a copy there yourself)."
    )


# -- locking ------------------------------------------------------------------------------------


@contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed, removed on release).

    A waiting process may have opened the lock file just before the holder removed it; it
    then notices that the path now names another file (or none) and starts again, so at
    most one process holds the lock for a given path at any time.
    """
    descriptor = _lock(path)
    try:
        yield
    finally:
        _unlock(path, descriptor)


def _lock(path: str) -> int:
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _acquire(descriptor, path)
            if _still_names(path, descriptor):
                return descriptor
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)


def _unlock(path: str, descriptor: int) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:  # pragma: no cover - removed by hand
        pass
    finally:
        os.close(descriptor)


def _acquire(descriptor: int, path: str) -> None:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.info("waiting for another process to finish with %s", path)
        fcntl.flock(descriptor, fcntl.LOCK_EX)


def _still_names(path: str, descriptor: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


# -- progress -----------------------------------------------------------------------------------


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Progress:
    """A progress bar on a terminal, else a log line every tenth of the file (or every 10 MB)."""

    _STEP_UNKNOWN = 10 << 20

    def __init__(self, label: str, total: Optional[int], enabled: Optional[bool], stream: Optional[IO[str]] = None):
        self.label = label
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.bar = _is_terminal(self.stream) if enabled is None else enabled
        self.step = max(total // 10, 1) if total else self._STEP_UNKNOWN
        self.next_report = self.step

    def update(self, done: int) -> None:
        if self.bar:
            self.stream.write("\r" + self._line(done))
            self.stream.flush()
        elif done >= self.next_report:
            logger.info("%s: %s", self.label, self._amount(done))
            self.next_report = (done // self.step + 1) * self.step

    def close(self) -> None:
        if self.bar:
            self.stream.write("\n")
            self.stream.flush()

    def _amount(self, done: int) -> str:
        if self.total:
            return f"{100 * done // self.total:3d}% ({done / 1e6:.1f} of {self.total / 1e6:.1f} MB)"
        return f"{done / 1e6:.1f} MB"

    def _line(self, done: int) -> str:
        if not self.total:
            return f"{self.label} {self._amount(done)}"
        filled = min(30, 30 * done // self.total)
        return f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self._amount(done)}"


# -- fetching -----------------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _check_answer(response: requests.Response) -> Optional[int]:
    """Refuse error statuses and HTML pages; return the announced size (None if unknown)."""
    if response.status_code >= 500:
        raise _Retryable(f"the server answered {response.status_code} {response.reason}")
    if response.status_code != 200:
        raise _Failure(f"the server answered {response.status_code} {response.reason}")
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type in ("text/html", "application/xhtml+xml"):
        raise _Failure(
            f"the server sent a web page ({content_type}) instead of a model file; check the address"
        )
    length = response.headers.get("Content-Length")
    if length is None or response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    try:
        return int(length)
    except ValueError:
        return None


def _fetch_once(session: requests.Session, url: str, partial: str, options: DownloadOptions, label: str) -> str:
    """Stream ``url`` into ``partial`` once; return the sha256 of the bytes received."""
    digest = hashlib.sha256()
    received = 0
    expected: Optional[int] = None
    try:
        with session.get(
            url,
            stream=True,
            timeout=(options.connect_timeout, options.read_timeout),
            headers={"Accept-Encoding": "identity"},
        ) as response:
            expected = _check_answer(response)
            progress = _Progress(label, expected, options.progress)
            try:
                with open(partial, "wb") as out:
                    for chunk in response.iter_content(chunk_size=options.chunk_size):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        progress.update(received)
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                progress.close()
    except requests.exceptions.ChunkedEncodingError as error:
        if expected is not None:
            raise _Retryable(
                f"the body was cut short of the {expected} bytes announced by Content-Length "
                f"(the connection broke after at least {received} bytes)"
            ) from error
        raise _Retryable(f"the connection broke after {received} bytes ({_describe(error)})") from error
    except requests.exceptions.Timeout as error:
        raise _Retryable(
            f"timed out (connect {options.connect_timeout:g} s, read {options.read_timeout:g} s) after "
            f"{received} bytes: {_describe(error)}"
        ) from error
    except requests.exceptions.ConnectionError as error:
        raise _Retryable(f"{_describe(error)} after {received} bytes") from error
    except requests.RequestException as error:
        raise _Failure(_describe(error)) from error
    except (ConnectionError, TimeoutError) as error:  # a socket error that requests did not wrap
        raise _Retryable(f"{_describe(error)} after {received} bytes") from error
    except OSError as error:
        raise _Failure(f"cannot write {partial}: {error.strerror or error}") from error
    if expected is not None and received != expected:
        raise _Retryable(f"the body was cut short: {received} of the {expected} bytes announced by Content-Length")
    if received == 0:
        raise _Failure("the server sent an empty file")
    return digest.hexdigest()


def _fetch(url: str, partial: str, options: DownloadOptions, label: str) -> str:
    """Download with retries; return the sha256 of the file written to ``partial``."""
    with requests.Session() as session:
        for attempt in range(1, options.attempts + 1):
            try:
                return _fetch_once(session, url, partial, options, label)
            except _Retryable as problem:
                if attempt == options.attempts:
                    raise _Failure(f"{problem} (gave up after {attempt} attempts)") from problem
                delay = options.backoff * 2 ** (attempt - 1)
                logger.warning(
                    "downloading %s failed (%s); retrying in %.1f s (attempt %d of %d)",
                    url, problem, delay, attempt + 1, options.attempts,
                )
                time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# -- validation ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _parameter_names(record: "PretrainedModel") -> frozenset:
    import torch  # here, not at the top: importing the settings and download code stays free of torch

    with torch.device("meta"):
        return frozenset(record.build().state_dict())


def expected_parameter_names(record: "PretrainedModel") -> Set[str]:
    """State-dict keys (without ``module.``) of the network ``record.build()`` makes."""
    return set(_parameter_names(record))


def _listing(names: List[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _validate(record: "PretrainedModel", partial: str, digest: str, sha256: Optional[str], trust: bool) -> None:
    """Refuse a file with the wrong digest, or that is not a checkpoint of ``record``'s network."""
    if sha256 and digest != sha256.strip().lower():
        raise _Failure(f"sha256 mismatch: expected {sha256.strip().lower()}, got {digest}")
    from .checkpoint import clean_state_dict, read_checkpoint  # imports torch

    try:
        content = read_checkpoint(partial, map_location="cpu", trust=trust)
        names = set(clean_state_dict(content, source="the downloaded file"))
    except CheckpointError as error:
        raise _Failure(f"the downloaded file is not a usable checkpoint ({error})") from error
    expected = expected_parameter_names(record)
    missing, unexpected = sorted(expected - names), sorted(names - expected)
    if missing or unexpected:
        details = "; ".join(
            f"{label}: {_listing(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys
        )
        raise _Failure(f"the downloaded file does not hold {record.title} weights ({details})")


# -- putting it together ------------------------------------------------------------------------


def _prepare_folder(record: "PretrainedModel", folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        if error.errno in _UNWRITABLE:
            raise _unwritable_error(record, folder, error) from error
        raise ModelDownloadError(
            f"cannot create the folder {folder} for the {record.title} model ({error.strerror or error}); "
            f"choose another location with '{_set_command(record)}'"
        ) from error


def _remove_stale_partials(target: str) -> None:
    """Delete temporary files left by a download that was killed (only the lock holder writes them)."""
    folder, name = os.path.split(target)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.partial")):
        logger.info("removing %s, left by an interrupted download", stale)
        try:
            os.unlink(stale)
        except FileNotFoundError:  # pragma: no cover - removed meanwhile
            pass


def _download_into_place(
    record: "PretrainedModel", url: str, target: str, sha256: Optional[str], trust: bool, options: DownloadOptions
) -> None:
    folder, name = os.path.split(target)
    try:
        descriptor, partial = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
    except OSError as error:
        if error.errno in _UNWRITABLE:
            raise _unwritable_error(record, folder, error) from error
        raise _download_error(record, url, f"cannot create a temporary file in {folder}: {error}") from error
    os.close(descriptor)
    try:
        logger.info("downloading the %s model from %s to %s", record.title, url, target)
        digest = _fetch(url, partial, options, f"downloading {name}")
        _validate(record, partial, digest, sha256, trust)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        logger.info("downloaded %s (sha256 %s)", target, digest)
    except _Failure as failure:
        raise _download_error(record, url, str(failure)) from failure.__cause__
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)


def download_model(
    record: "PretrainedModel",
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
    record : PretrainedModel
        Which model; gives the expected parameter names and the setting to name in errors.
    target : str
        Final path of the file. Its folder is created if needed.
    url : str, optional
        Where to download from (default ``record.url``).
    sha256 : str, optional
        Expected hex digest of the file; not checked when None.
    trust : bool
        Validate the file with full unpickling (only for sources you trust).
    options : DownloadOptions, optional
        Timeouts, retries and progress display.

    Returns
    -------
    str
        ``target``, which now exists and is complete.

    Raises
    ------
    ModelDownloadError
        If the folder cannot be written, or the download or its validation fails. Nothing
        is left in the folder in that case.
    """
    url = record.url if url is None else url
    options = DownloadOptions() if options is None else options
    target = os.path.abspath(target)
    folder = os.path.dirname(target)
    _prepare_folder(record, folder)
    lock_path = target + ".lock"
    try:
        descriptor = _lock(lock_path)
    except OSError as error:
        if error.errno in _UNWRITABLE:
            raise _unwritable_error(record, folder, error) from error
        raise ModelDownloadError(f"cannot create the lock file {lock_path}: {error}") from error
    try:
        if os.path.isfile(target):
            logger.info("%s is already there (downloaded by another process)", target)
        else:
            _remove_stale_partials(target)
            _download_into_place(record, url, target, sha256, trust, options)
    finally:
        _unlock(lock_path, descriptor)
    return target
