"""Fetching a file from an address: bounded, checked, written whole or not at all.

:func:`fetch` is a thin layer over well-kept libraries. ``requests`` streams
the body (urllib3 undoes a ``Content-Encoding`` a chunk at a time) and retries
connection errors and 5xx answers (``urllib3.util.Retry``); ``filelock`` lets
one process download while the others wait for its file;
:func:`~bob.learn.pytorch.atomic.replacing` writes a temporary file beside the
target and renames it into place only once it passed every check: its size,
its sha256 when one is given, and the caller's ``check``. The module knows
nothing of networks, settings or bob.

Every wait is bounded by one deadline counted from the start of the call
(:attr:`FetchOptions.deadline`): the wait for another process downloading the
same file, connecting, the answer's headers (through a proxy too), each read,
the retries and the pauses between them. A minimum rate over each window of
time and a cap on the bytes written bound the rest. The user name and
password of an address never appear in messages or logs.
"""
import concurrent.futures
import hashlib
import logging
import math
import os
import sys
import threading
import time
import urllib.parse
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import click
import filelock
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from .atomic import companion_name, replacing

__all__ = [
    "FetchOptions", "FetchError", "DeadlineError", "RateError", "fetch", "lock_path", "redact_url", "MAX_SECONDS",
]

logger = logging.getLogger(__name__)

#: Largest number of seconds accepted for a timeout or a deadline (about 11.6 days): larger
#: values (``inf``, ``1e300``) overflow the socket layer instead of meaning "wait forever".
MAX_SECONDS = 1e6
_IDENTITY = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class FetchOptions:
    """How patiently to download, and how much.

    Attributes
    ----------
    connect_timeout, read_timeout : float
        Seconds to wait for the connection, and for each piece of data (never beyond the deadline).
    attempts : int
        Tries in all; connection errors, timeouts, cut-off bodies and 5xx answers are retried.
    backoff : float
        Pause factor between tries, as urllib3's ``Retry.backoff_factor``: none before the
        second try, then ``2 * backoff``, ``4 * backoff``, ... seconds.
    chunk_size : int
        Most bytes read, expanded and written at a time.
    progress : bool or None
        Draw a progress bar on standard error; None draws it only when standard
        error is a terminal. Without a bar, progress goes to the log.
    deadline : float
        Seconds the whole call may take, from its start: waiting for another
        process's download of the same file, every try and every pause.
    min_rate : float
        Slowest acceptable rate in bytes per second, averaged over each ``rate_window``; 0 accepts any.
    rate_window : float
        Seconds over which the rate is averaged.
    max_bytes : int or None
        Most bytes written (after expansion); None: no cap.
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


class FetchError(Exception):
    """A download failed and nothing was written.

    Attributes
    ----------
    cause : str
        What happened, without credentials.
    url : str
        The address, without credentials ("" until :func:`fetch` fills it in).
    hint : str
        What to change; each subclass names its option.
    """

    hint = ""

    def __init__(self, cause: str, url: str = ""):
        super().__init__(cause)
        self.cause, self.url = cause, url

    def __str__(self) -> str:
        hint = f"; {self.hint}" if self.hint else ""
        return f"could not download {self.url}: {self.cause}{hint}"


class DeadlineError(FetchError):
    """The deadline passed: downloading, or waiting for another process downloading the same file."""

    hint = "allow more time with a larger FetchOptions.deadline"


class RateError(FetchError):
    """The server sent data slower than the minimum rate."""

    hint = "accept a slower server with a smaller FetchOptions.min_rate (0 accepts any rate)"


class _Retryable(FetchError):
    """A problem that may go away on another try."""


def redact_url(url: str) -> str:
    """``url`` without the user name and password it may carry, for messages and logs.

    >>> redact_url("https://alice:s3cret@example.org/m.pth.tar")
    'https://***@example.org/m.pth.tar'
    >>> redact_url("https://example.org/m.pth.tar")
    'https://example.org/m.pth.tar'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host: show nothing of it that could be a secret
        return "<an address that cannot be parsed>" if "@" in url else url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


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


class _Clock:
    """The one deadline of a call, counted from its start."""

    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self, received: int, note: str = "") -> DeadlineError:
        return DeadlineError(f"the download did not finish within its deadline of {self.seconds:g} s ({received} bytes received{note})")

    def check(self, received: int) -> float:
        """Seconds left; raise once the deadline has passed."""
        left = self.left()
        if left <= 0:
            raise self.expired(received)
        return left


class _Tries:
    """The tries left, shared by urllib3's ``Retry`` (connection errors, 5xx answers) and the loop over cut bodies."""

    def __init__(self, options: FetchOptions, clock: _Clock):
        self.options, self.clock, self.left, self.cut = options, clock, options.attempts, False

    def retry(self) -> Retry:
        """A ``Retry`` for one request: the tries left, as many as their pauses fit before the deadline."""
        wanted, allowed = self.left - 1, 0
        while allowed < wanted and self.options.backoff * (2 ** (allowed + 1) - 2) < self.clock.left():
            allowed += 1
        self.cut, self.granted = allowed < wanted, allowed
        return Retry(
            total=allowed, backoff_factor=self.options.backoff, status_forcelist=range(500, 600),
            raise_on_status=False, respect_retry_after_header=False,
        )

    def spend(self, used: int) -> None:
        self.left -= used

    def gave_up(self, problem: str) -> FetchError:
        if self.left > 0 and self.cut:
            return self.clock.expired(0, f"; no time left to try again after: {problem}")
        return FetchError(f"{problem} (gave up after {self.options.attempts} attempts)")

    def pause(self) -> float:
        """Seconds to wait before the next try of a cut body, as urllib3 would."""
        used = self.options.attempts - self.left
        return 0.0 if used <= 1 else self.options.backoff * 2 ** (used - 1)


class _Pace:
    """Raise when fewer than ``min_rate`` bytes per second arrived over the last window of time."""

    def __init__(self, options: FetchOptions):
        self.min_rate, self.window = options.min_rate, options.rate_window
        self.since, self.base = time.monotonic(), 0

    def check(self, received: int) -> None:
        now = time.monotonic()
        if now - self.since < self.window:
            return
        rate = (received - self.base) / (now - self.since)
        if rate < self.min_rate:
            raise RateError(
                f"the download ran at {rate / 1000:.3g} kB/s over {now - self.since:.0f} s, below the minimum of "
                f"{self.min_rate / 1000:g} kB/s ({received} bytes received)"
            )
        self.since, self.base = now, received


@contextmanager
def _progress(label: str, total: Optional[int], enabled: Optional[bool]) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(done)``: a click progress bar on a terminal, else a log line every tenth (or 10 MB)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if enabled and total:
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            yield lambda done: bar.update(done - bar.pos)
        return
    step = max(total // 10, 1) if total else 10 << 20
    next_report = step

    def log(done: int) -> None:
        nonlocal next_report
        if done >= next_report:
            amount = f"{100 * done // total:3d}% ({done / 1e6:.1f} of {total / 1e6:.1f} MB)" if total else f"{done / 1e6:.1f} MB"
            logger.info("%s: %s", label, amount)
            next_report = (done // step + 1) * step

    yield log


def _describe(error: BaseException) -> str:
    """``Name: first line`` of ``error``, or of the reason urllib3 gave up for (``MaxRetryError.reason``)."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    shown = reason if isinstance(reason, BaseException) else error
    text = str(shown).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _is_timeout(error: BaseException) -> bool:
    """Whether ``error`` (or the reason urllib3 gave up for) is a timeout; a refused connection is not."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    cause = reason if isinstance(reason, BaseException) else error
    refused = isinstance(cause, urllib3.exceptions.NewConnectionError)  # a subclass of ConnectTimeoutError
    return not refused and isinstance(cause, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))


def _response_within(session: requests.Session, url: str, clock: _Clock, options: FetchOptions) -> requests.Response:
    """``session.get(url)`` up to the answer's headers, given up at the deadline.

    Timeouts bound each wait for data, not their sum: a server or proxy sending
    its headers a byte at a time would keep the request going. The request
    runs in a thread of its own that the caller stops waiting for at the
    deadline; an answer that comes later is closed unread.
    """
    answer: concurrent.futures.Future = concurrent.futures.Future()
    timeouts = (min(options.connect_timeout, clock.left()), min(options.read_timeout, clock.left()))

    def request() -> None:
        try:
            response = session.get(url, stream=True, timeout=timeouts, headers=_IDENTITY)
        except BaseException as error:  # handed to the caller, if it still waits
            with suppress(concurrent.futures.InvalidStateError):
                answer.set_exception(error)
            return
        try:
            answer.set_result(response)
        except concurrent.futures.InvalidStateError:  # the caller gave up
            response.close()

    threading.Thread(target=request, name="bob.learn.pytorch.fetch", daemon=True).start()
    try:
        return answer.result(timeout=max(clock.left(), 0.0))
    except concurrent.futures.TimeoutError:
        if answer.cancel():
            raise clock.expired(0) from None
        return answer.result()


def _check_size(size: int, options: FetchOptions, description: str) -> None:
    if options.max_bytes is not None and size > options.max_bytes:
        raise FetchError(
            f"the server sent more than {options.max_bytes} bytes, far more than the {description} "
            f"(a body without end, or not a {description}); refused"
        )


def _check_answer(response: requests.Response, options: FetchOptions, description: str) -> Optional[int]:
    """Refuse error statuses, web pages and unknown encodings; return the announced size (None if unknown)."""
    if response.status_code != 200:
        problem = _Retryable if response.status_code >= 500 else FetchError
        raise problem(f"the server answered {response.status_code} {response.reason}")
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type in ("text/html", "application/xhtml+xml"):
        raise FetchError(f"the server sent a web page ({content_type}) instead of a {description}; check the address")
    encoding = response.headers.get("Content-Encoding", "").strip().lower() or "identity"
    if encoding != "identity":
        if encoding not in response.raw.CONTENT_DECODERS:
            raise FetchError(f"the server sent the file in the encoding '{encoding}', which cannot be read")
        return None
    length = response.headers.get("Content-Length", "")
    expected = int(length) if length.isdigit() else None
    if expected is not None:
        _check_size(expected, options, description)
    return expected


def _limit_wait(response: requests.Response, seconds: float) -> None:
    """Let the next read of ``response`` wait at most ``seconds`` (the time left to the deadline)."""
    sock = getattr(response.raw.connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


@dataclass
class _Download:
    """One call of :func:`fetch` once it holds the lock: tries, each streamed into ``temporary``."""

    url: str
    temporary: str
    clock: _Clock
    options: FetchOptions
    description: str
    label: str

    def run(self) -> str:
        """Download with retries before the deadline; return the sha256 of the file written."""
        tries = _Tries(self.options, self.clock)
        while True:
            try:
                return self.attempt(tries)
            except _Retryable as problem:
                if tries.left <= 0 or tries.pause() >= self.clock.left():
                    tries.cut = tries.left > 0
                    raise tries.gave_up(problem.cause) from problem
                logger.warning(
                    "downloading %s failed (%s); retrying in %.1f s (%d tries left)",
                    redact_url(self.url), _scrub(problem.cause, self.url), tries.pause(), tries.left,
                )
                time.sleep(tries.pause())

    def attempt(self, tries: _Tries) -> str:
        """One request (with urllib3's retries) streamed into the temporary file; return its sha256."""
        self.clock.check(0)
        with requests.Session() as session:
            adapter = HTTPAdapter(max_retries=tries.retry())
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            try:
                response = _response_within(session, self.url, self.clock, self.options)
            except (requests.ConnectionError, requests.Timeout) as error:
                tries.spend(tries.granted + 1)
                self.clock.check(0)
                raise tries.gave_up(self.problem(error, 0).cause) from error
            except requests.RequestException as error:
                raise FetchError(_describe(error)) from error
            with response:
                tries.spend(1 + (len(response.raw.retries.history) if response.raw.retries else 0))
                written, digest = self.stream(response)
        if written == 0:
            raise FetchError("the server sent an empty file")
        return digest

    def stream(self, response: requests.Response) -> Tuple[int, str]:
        """Copy the (expanded) body into the temporary file; return the bytes written and their sha256."""
        options, clock = self.options, self.clock
        expected = _check_answer(response, options, self.description)
        digest, written, pace = hashlib.sha256(), 0, _Pace(options)
        try:
            with open(self.temporary, "wb") as out, _progress(self.label, expected, options.progress) as advance:
                while True:
                    _limit_wait(response, min(options.read_timeout, clock.check(written)))
                    piece = response.raw.read1(options.chunk_size, decode_content=True)
                    if not piece:
                        break
                    written += len(piece)
                    _check_size(written, options, self.description)
                    out.write(piece)
                    digest.update(piece)
                    advance(written)
                    clock.check(written)
                    pace.check(written)
        except urllib3.exceptions.DecodeError as error:
            raise FetchError(f"the compressed body is damaged ({_describe(error)})") from error
        except (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError, TimeoutError) as error:
            clock.check(written)  # a read cut short by the deadline: that is the cause to report
            if expected is not None and isinstance(error, urllib3.exceptions.ProtocolError):
                raise _Retryable(
                    f"the body was cut short of the {expected} bytes announced by Content-Length "
                    f"(the connection broke after at least {written} bytes)"
                ) from error
            raise self.problem(error, written) from error
        except OSError as error:
            raise FetchError(f"cannot write {self.temporary}: {error.strerror or error}") from error
        if expected is not None and written != expected:
            raise _Retryable(f"the body was cut short: {written} of the {expected} bytes announced by Content-Length")
        return written, digest.hexdigest()

    def problem(self, error: BaseException, received: int) -> FetchError:
        """The retryable problem a library's exception stands for."""
        if _is_timeout(error):
            options = self.options
            return _Retryable(
                f"timed out (connect {options.connect_timeout:g} s, read {options.read_timeout:g} s) after "
                f"{received} bytes: {_describe(error)}"
            )
        return _Retryable(f"{_describe(error)} after {received} bytes")


def lock_path(target: str) -> str:
    """The lock file of a download to ``target``: ``<target>.lock``, shortened when the name is long."""
    return os.fspath(companion_name(target, ".lock"))


@contextmanager
def _exclusive(target: str, clock: _Clock) -> Iterator[None]:
    """Hold the download lock of ``target``, waiting at most until the deadline; remove the lock file after.

    The file is removed while still held: a process that opened it meanwhile
    notices (filelock checks the link count) and locks a new file instead.
    """
    path = lock_path(target)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        logger.info("waiting for another process downloading %s (at most %.0f s)", target, clock.left())
        try:
            lock.acquire(timeout=max(clock.left(), 0.0))
        except filelock.Timeout:
            raise DeadlineError(
                f"the download did not finish within its deadline of {clock.seconds:g} s: another process "
                f"downloading the same file held {path} all that time (a stopped or hung process holds it until it ends)"
            ) from None
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:  # pragma: no cover - removed by hand
            pass
        finally:
            lock.release()


def fetch(
    url: str,
    target: str,
    *,
    sha256: Optional[str] = None,
    check: Optional[Callable[[str], None]] = None,
    options: Optional[FetchOptions] = None,
    description: str = "file",
) -> str:
    """Download ``url`` to ``target`` unless the file is already there.

    Parameters
    ----------
    url : str
        An ``http://`` or ``https://`` address; a user name and password in it are used, never shown.
        The proxies of the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``) apply.
    target : str
        Final path of the file. Its folder is created if needed.
    sha256 : str, optional
        Expected hex digest of the file; not checked when None.
    check : callable, optional
        ``check(path)`` of the complete temporary file before it is renamed into place;
        it raises ``ValueError`` to refuse the file, with a message saying why.
    options : FetchOptions, optional
        Timeouts, retries, bounds and progress display.
    description : str
        What the file is, in messages ("model file": "... instead of a model file").

    Returns
    -------
    str
        ``target`` (made absolute), which now exists and is complete.

    Raises
    ------
    FetchError
        The download failed (:class:`DeadlineError`, :class:`RateError` for those two bounds).
        Nothing is left beside the target.
    OSError
        The folder, the lock file or the temporary file cannot be made or written
        (``cannot write ... to ...``), or ``target`` is not a regular file.

    Examples
    --------
    The address is checked before anything is done:

    >>> fetch("ftp://alice:s3cret@example.org/x.bin", "x.bin")
    Traceback (most recent call last):
    ...
    bob.learn.pytorch.fetch.FetchError: could not download ftp://***@example.org/x.bin: the address must start with http:// or https:// and name a host
    """
    _check_address(url)
    options = FetchOptions() if options is None else options
    clock = _Clock(options.deadline)
    target = os.path.abspath(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        with _exclusive(target, clock):
            if os.path.isfile(target):
                logger.info("%s is already there (downloaded by another process)", target)
                return target
            logger.info("downloading %s to %s", redact_url(url), target)
            with replacing(target, what=f"the {description}") as temporary:
                label = f"downloading {os.path.basename(target)}"
                digest = _Download(url, os.fspath(temporary), clock, options, description, label).run()
                _verify(os.fspath(temporary), digest, sha256, check)
            logger.info("downloaded %s (sha256 %s)", target, digest)
            return target
    except FetchError as error:
        error.cause, error.url = _scrub(error.cause, url), redact_url(url)
        raise error from (None if redact_url(url) != url else error.__cause__)


def _check_address(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FetchError("the address must start with http:// or https:// and name a host", redact_url(url))


def _verify(path: str, digest: str, sha256: Optional[str], check: Optional[Callable[[str], None]]) -> None:
    if sha256 and digest != sha256.strip().lower():
        raise FetchError(f"sha256 mismatch: expected {sha256.strip().lower()}, got {digest}")
    if check is not None:
        try:
            check(path)
        except ValueError as error:
            raise FetchError(str(error)) from error
