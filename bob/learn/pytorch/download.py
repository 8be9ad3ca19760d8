"""Downloading a pretrained model file without ever leaving a bad file behind.

The file is streamed with ``requests`` into a unique temporary file beside the
target, checked (size against ``Content-Length``, sha256 when one is known,
and a safe load showing exactly the parameter names the network expects),
then renamed into place atomically. Connection errors, timeouts and 5xx
answers are retried a few times with exponential backoff.

Every download is bounded, whatever the server does: an overall deadline
(retries included), a minimum rate over each window of time, and a cap on the
bytes written (a multiple of the size of the model's weights). A compressed
body is expanded piece by piece, and the cap counts the expanded bytes. The
user name and password of an address never appear in messages or logs. A lock file beside
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
import math
import os
import sys
import socket
import tempfile
import threading
import time
import urllib.parse
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Callable, Iterator, List, Optional, Set, Tuple

import requests
import torch
import urllib3

from .atomic import not_regular_file_reason
from .checkpoint import clean_state_dict, read_checkpoint
from .errors import CheckpointError, ModelDownloadError
from .pretrained import PretrainedNetwork
from .settings import redact_url


__all__ = [
    "DownloadOptions",
    "DEADLINE_KEY",
    "MIN_RATE_KEY",
    "download_model",
    "file_lock",
    "expected_parameter_names",
    "model_size_cap",
]

logger = logging.getLogger(__name__)

#: errno values meaning "this folder cannot be written" (permissions, read-only file system).
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


#: User setting: seconds a whole download may take, retries included.
DEADLINE_KEY = "bob.learn.pytorch.extractor.audio.download_deadline"
#: User setting: the slowest acceptable download, in kilobytes (1000 bytes) per second.
MIN_RATE_KEY = "bob.learn.pytorch.extractor.audio.download_min_rate"
#: Largest number of seconds accepted for a timeout or a deadline (about 11.6 days): larger
#: values (``inf``, ``1e300``) overflow the socket layer instead of meaning "wait forever".
MAX_SECONDS = 1e6
#: The bytes accepted from a server, as a multiple of the size of the model's weights.
SIZE_CAP_FACTOR = 4


@dataclass(frozen=True)
class DownloadOptions:
    """How patiently to download, and how much.

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
    deadline : float
        Seconds the whole download may take, retries and waits included
        (setting ``...download_deadline``).
    min_rate : float
        Slowest acceptable rate in bytes per second, averaged over each
        ``rate_window``; 0 accepts any rate (setting ``...download_min_rate``, in kB/s).
    rate_window : float
        Seconds over which the rate is averaged.
    max_bytes : int or None
        Most bytes written before the download is refused; None: :data:`SIZE_CAP_FACTOR`
        times the size of the model's weights.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    attempts: int = 3
    backoff: float = 1.0
    chunk_size: int = 1 << 20
    progress: Optional[bool] = None
    deadline: float = 3600.0
    min_rate: float = 20_000.0
    rate_window: float = 60.0
    max_bytes: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "deadline", "rate_window", "backoff"):
            _check_seconds(name, getattr(self, name), zero_ok=name == "backoff")
        if self.attempts < 1:
            raise ValueError("download attempts must be at least 1")
        if self.chunk_size < 1:
            raise ValueError("download chunk_size must be >= 1")
        if not (math.isfinite(self.min_rate) and self.min_rate >= 0):
            raise ValueError(f"download min_rate must be a finite number of bytes per second >= 0, not {self.min_rate!r}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"download max_bytes must be at least 1, not {self.max_bytes!r}")


def _check_seconds(name: str, value: float, zero_ok: bool = False) -> None:
    """Refuse a duration that is not a finite number of seconds up to :data:`MAX_SECONDS`."""
    low_ok = value >= 0 if zero_ok else value > 0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok and value <= MAX_SECONDS):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"download {name} must be a number of seconds {bound} and <= {MAX_SECONDS:g}, not {value!r}")


def _scrub(text: str, url: str) -> str:
    """``text`` with the user name and password of ``url`` removed wherever the address appears.

    >>> _scrub("cannot reach http://bob:pw@host/x (user bob:pw@host)", "http://bob:pw@host/x")
    'cannot reach http://***@host/x (user ***@host)'
    """
    netloc = urllib.parse.urlsplit(url).netloc
    if "@" not in netloc:
        return text
    userinfo = netloc.rpartition("@")[0]
    text = text.replace(url, redact_url(url))
    for secret in {userinfo, urllib.parse.unquote(userinfo)}:
        text = text.replace(secret + "@", "***@")
    return text


class _Failure(Exception):
    """A download problem worth reporting as it is."""


class _Retryable(_Failure):
    """A download problem that may go away on another try."""


def _set_command(record: PretrainedNetwork) -> str:
    return f"bob config set {record.path_key} /path/to/model.pth.tar"


def _download_error(record: PretrainedNetwork, url: str, cause: str) -> ModelDownloadError:
    return ModelDownloadError(
        f"could not download the {record.title} model from {redact_url(url)}: {_scrub(cause, url)}. "
        f"To use a copy obtained by other means, run: {_set_command(record)}"
    )


def _unwritable_error(record: PretrainedNetwork, folder: str, error: OSError) -> ModelDownloadError:
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
    if length is None or _encoding(response) != "identity":
        return None
    try:
        return int(length)
    except ValueError:
        return None


def _encoding(response: requests.Response) -> str:
    return response.headers.get("Content-Encoding", "identity").strip().lower() or "identity"


class _Expander:
    """Undo a ``Content-Encoding`` piece by piece, never producing more than ``limit`` bytes at a time.

    A compressed body (which a server may send although asked for ``identity``) is
    thereby never expanded in full before the size cap is checked.
    """

    _WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

    def __init__(self, encoding: str, limit: int):
        if encoding != "identity" and encoding not in self._WBITS:
            raise _Failure(f"the server sent the file in the encoding '{encoding}', which cannot be read")
        self.limit = limit
        self.inflater = None if encoding == "identity" else zlib.decompressobj(self._WBITS[encoding])

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """The expanded bytes of ``data``, at most ``limit`` at a time."""
        if self.inflater is None:
            yield data
            return
        while True:
            try:
                piece = self.inflater.decompress(data, self.limit)
            except zlib.error as error:
                raise _Failure(f"the compressed body is damaged ({error})") from None
            yield piece
            data = self.inflater.unconsumed_tail
            if not data and len(piece) < self.limit:
                return

    def check_complete(self) -> None:
        if self.inflater is not None and not self.inflater.eof:
            raise _Retryable("the compressed body was cut short")


class _Budget:
    """What a download may still spend: time to its deadline, a minimum rate, bytes up to the cap."""

    def __init__(self, options: DownloadOptions, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.max_bytes = max_bytes
        self.clock = clock
        self.end = clock() + options.deadline

    def remaining(self, received: int = 0) -> float:
        """Seconds left; raise once the deadline has passed."""
        left = self.end - self.clock()
        if left <= 0:
            raise _Failure(
                f"the download did not finish within its deadline of {self.options.deadline:g} s "
                f"({received} bytes received); allow more time with "
                f"'bob config set {DEADLINE_KEY} SECONDS'"
            )
        return left

    def timeouts(self) -> Tuple[float, float]:
        """Connect and read timeouts for a request, never beyond the deadline."""
        left = self.remaining()
        return min(self.options.connect_timeout, left), min(self.options.read_timeout, left)

    def check_size(self, written: int) -> None:
        if written > self.max_bytes:
            raise _Failure(
                f"the server sent more than {self.max_bytes} bytes, far more than the model file "
                "(a body without end, or not a model file); refused"
            )

    def pace(self) -> "_Pace":
        return _Pace(self.options.min_rate, self.options.rate_window, self.clock)


class _Pace:
    """Raise when fewer than ``min_rate`` bytes per second arrived over the last window of time."""

    def __init__(self, min_rate: float, window: float, clock: Callable[[], float]):
        self.min_rate, self.window, self.clock = min_rate, window, clock
        self.since, self.base = clock(), 0

    def check(self, received: int) -> None:
        now = self.clock()
        if now - self.since < self.window:
            return
        rate = (received - self.base) / (now - self.since)
        if rate < self.min_rate:
            raise _Failure(
                f"the download ran at {rate / 1000:.3g} kB/s over {now - self.since:.0f} s, below the minimum of "
                f"{self.min_rate / 1000:g} kB/s ({received} bytes received); accept a slower server with "
                f"'bob config set {MIN_RATE_KEY} KB_PER_SECOND' (0 accepts any rate)"
            )
        self.since, self.base = now, received


class _Watchdog:
    """Shut the sockets of a download down when its deadline passes, waking any read that waits.

    Socket timeouts bound each wait, not their sum: a server can keep a read
    (of the headers, say) alive forever by sending a byte now and then. A
    timer that shuts the connection down at the deadline ends any such read.
    """

    def __init__(self) -> None:
        self._sockets: List[socket.socket] = []
        self._guard = threading.Lock()
        self.fired = False

    def watch(self, sock: socket.socket) -> None:
        with self._guard:
            self._sockets.append(sock)
            if self.fired:
                _shut(sock)

    def fire(self) -> None:
        with self._guard:
            self.fired = True
            for sock in self._sockets:
                _shut(sock)

    def session(self) -> requests.Session:
        """A session whose connections are watched."""
        session = requests.Session()
        for prefix in ("http://", "https://"):
            adapter = requests.adapters.HTTPAdapter()
            adapter.poolmanager.pool_classes_by_scheme = _watched_pools(self)
            session.mount(prefix, adapter)
        return session


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _watched_pools(watchdog: _Watchdog) -> dict:
    """urllib3 pool classes whose new sockets are handed to ``watchdog`` before any byte is exchanged."""

    def watched(connection_class: type) -> type:
        class Watched(connection_class):  # type: ignore[misc, valid-type]
            def _new_conn(self) -> socket.socket:
                sock = super()._new_conn()
                watchdog.watch(sock)
                return sock

        return Watched

    class Pool(urllib3.HTTPConnectionPool):
        ConnectionCls = watched(urllib3.connection.HTTPConnection)

    class SecurePool(urllib3.HTTPSConnectionPool):
        ConnectionCls = watched(urllib3.connection.HTTPSConnection)

    return {"http": Pool, "https": SecurePool}


def _limit_wait(response: requests.Response, seconds: float) -> None:
    """Let the next read of ``response`` wait at most ``seconds`` (the time left to the deadline)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _stream_body(response: requests.Response, out: IO[bytes], budget: _Budget, on_data: Callable[[bytes], None]) -> int:
    """Copy the body of ``response`` into ``out`` within ``budget``; return the bytes written."""
    options = budget.options
    expander = _Expander(_encoding(response), options.chunk_size)
    pace = budget.pace()
    written = 0
    while True:
        _limit_wait(response, min(options.read_timeout, budget.remaining(written)))
        data = response.raw.read1(options.chunk_size, decode_content=False)
        if not data:
            break
        for piece in expander.pieces(data):
            written += len(piece)
            budget.check_size(written)
            out.write(piece)
            on_data(piece)
        budget.remaining(written)
        pace.check(written)
    expander.check_complete()
    return written


def _fetch_once(session: requests.Session, url: str, partial: str, budget: _Budget, label: str) -> str:
    """Stream ``url`` into ``partial`` once; return the sha256 of the bytes written."""
    options = budget.options
    digest = hashlib.sha256()
    received = 0
    expected: Optional[int] = None

    def on_data(piece: bytes) -> None:
        nonlocal received
        digest.update(piece)
        received += len(piece)
        progress.update(received)

    try:
        with session.get(
            url, stream=True, timeout=budget.timeouts(), headers={"Accept-Encoding": "identity"}
        ) as response:
            expected = _check_answer(response)
            if expected is not None:
                budget.check_size(expected)
            progress = _Progress(label, expected, options.progress)
            try:
                with open(partial, "wb") as out:
                    _stream_body(response, out, budget, on_data)
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                progress.close()
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError) as error:
        if expected is not None:
            raise _Retryable(
                f"the body was cut short of the {expected} bytes announced by Content-Length "
                f"(the connection broke after at least {received} bytes)"
            ) from error
        raise _Retryable(f"the connection broke after {received} bytes ({_describe(error)})") from error
    except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError) as error:
        raise _Retryable(
            f"timed out (connect {options.connect_timeout:g} s, read {options.read_timeout:g} s) after "
            f"{received} bytes: {_describe(error)}"
        ) from error
    except (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError) as error:
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


def _fetch(url: str, partial: str, budget: _Budget, label: str) -> str:
    """Download with retries within ``budget``; return the sha256 of the file written to ``partial``."""
    watchdog = _Watchdog()
    timer = threading.Timer(budget.remaining(), watchdog.fire)
    timer.daemon = True
    timer.start()
    try:
        with watchdog.session() as session:
            return _attempts(session, url, partial, budget, label)
    finally:
        timer.cancel()


def _attempts(session: requests.Session, url: str, partial: str, budget: _Budget, label: str) -> str:
    options = budget.options
    for attempt in range(1, options.attempts + 1):
        try:
            digest = _fetch_once(session, url, partial, budget, label)
            budget.remaining(os.path.getsize(partial))  # a body ended by the watchdog is not complete
            return digest
        except _Retryable as problem:
            budget.remaining()  # past the deadline, that is the cause to report
            if attempt == options.attempts:
                raise _Failure(f"{problem} (gave up after {attempt} attempts)") from problem
            delay = min(options.backoff * 2 ** (attempt - 1), budget.remaining())
            logger.warning(
                "downloading %s failed (%s); retrying in %.1f s (attempt %d of %d)",
                redact_url(url), _scrub(str(problem), url), delay, attempt + 1, options.attempts,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# -- validation ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _parameter_names(record: PretrainedNetwork) -> frozenset:
    with torch.device("meta"):
        return frozenset(record.build().state_dict())


def expected_parameter_names(record: PretrainedNetwork) -> Set[str]:
    """State-dict keys (without ``module.``) of the network ``record.build()`` makes."""
    return set(_parameter_names(record))


@functools.lru_cache(maxsize=None)
def _weights_bytes(record: PretrainedNetwork) -> int:
    with torch.device("meta"):
        state = record.build().state_dict()
    return sum(tensor.numel() * tensor.element_size() for tensor in state.values())


def model_size_cap(record: PretrainedNetwork) -> int:
    """Most bytes accepted for a download of ``record``: :data:`SIZE_CAP_FACTOR` times its weights, plus 1 MiB.

    The released files hold the weights and a few numbers, so a larger body
    is not the model (an endless body, or a compressed one that expands without end).
    """
    return SIZE_CAP_FACTOR * _weights_bytes(record) + (1 << 20)


def _listing(names: List[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _validate(record: PretrainedNetwork, partial: str, digest: str, sha256: Optional[str], trust: bool) -> None:
    """Refuse a file with the wrong digest, or that is not a checkpoint of ``record``'s network."""
    if sha256 and digest != sha256.strip().lower():
        raise _Failure(f"sha256 mismatch: expected {sha256.strip().lower()}, got {digest}")
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
    record: PretrainedNetwork, url: str, target: str, sha256: Optional[str], trust: bool, options: DownloadOptions
) -> None:
    folder, name = os.path.split(target)
    budget = _Budget(options, model_size_cap(record) if options.max_bytes is None else options.max_bytes)
    try:
        descriptor, partial = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
    except OSError as error:
        if error.errno in _UNWRITABLE:
            raise _unwritable_error(record, folder, error) from error
        raise _download_error(record, url, f"cannot create a temporary file in {folder}: {error}") from error
    os.close(descriptor)
    try:
        logger.info("downloading the %s model from %s to %s", record.title, redact_url(url), target)
        digest = _fetch(url, partial, budget, f"downloading {name}")
        _validate(record, partial, digest, sha256, trust)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        logger.info("downloaded %s (sha256 %s)", target, digest)
    except _Failure as failure:
        cause = None if redact_url(url) != url else failure.__cause__  # a cause may quote the credentials
        raise _download_error(record, url, str(failure)) from cause
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)


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
        If the folder cannot be written, ``target`` is not a regular file (a device,
        a FIFO: never replaced), or the download or its validation fails. Nothing
        is left in the folder in that case.
    """
    url = record.url if url is None else url
    options = DownloadOptions() if options is None else options
    target = os.path.abspath(target)
    reason = not_regular_file_reason(target)
    if reason:
        raise ModelDownloadError(f"will not download the {record.title} model onto {target}: it is {reason}")
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
