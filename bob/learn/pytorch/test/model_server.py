"""A local HTTP server for download tests, with fault modes, and workers for multi-process tests.

Only 127.0.0.1 is used; nothing here touches the network. The server also
answers requests meant for a proxy (``GET http://host/path``) as if it were
one: the file named by the path is served in the next mode, so a dripping
proxy is a server whose plan says "drip".
"""
import functools
import gzip
import hashlib
import http.server
import os
import threading
import urllib.parse
from collections import deque
from typing import Deque, Dict, List, Tuple

#: What the server does for one request.
MODES = (
    "ok", "404", "500", "truncated", "html", "garbage", "slow", "trickle", "no_length",
    "drip", "endless", "gzip", "gzip_bomb", "huge_length", "drip_headers", "stall_no_length", "unknown_encoding",
)


@functools.lru_cache(maxsize=None)
def gzip_bomb() -> bytes:
    """64 MiB of zeros in about 64 kB of gzip (made once)."""
    return gzip.compress(bytes(64 << 20), compresslevel=9)


class ModelServer:
    """Serve ``files`` (path → bytes); each request consumes the next mode of ``plan`` ("ok" once empty).

    Attributes
    ----------
    requests : list of (path, mode)
        Every request received, in order.
    """

    def __init__(self, files: Dict[str, bytes], slow_seconds: float = 5.0):
        self.files = dict(files)
        self.slow_seconds = slow_seconds
        self.plan: Deque[str] = deque()
        self.requests: List[Tuple[str, str]] = []
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ModelServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{path.lstrip('/')}"

    def then(self, *modes: str) -> "ModelServer":
        """Queue fault modes for the next requests."""
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown modes {unknown}")
        self.plan.extend(modes)
        return self

    def served(self, mode: str = "ok") -> int:
        """How many requests were answered in ``mode``."""
        return sum(1 for _, answered in self.requests if answered == mode)

    def _next_mode(self, path: str) -> str:
        with self._guard:
            mode = self.plan.popleft() if self.plan else "ok"
            self.requests.append((path, mode))
            return mode


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        """A client that gave up (timeout tests) breaks the pipe: not worth a traceback."""


def _handler_for(server: ModelServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            mode = server._next_mode(path)
            body = server.files.get(path)
            if mode == "404" or body is None:
                self._answer(404, b"not found", "text/plain")
            elif mode == "500":
                self._answer(500, b"internal error", "text/plain")
            elif mode == "html":
                self._answer(200, b"<!DOCTYPE html><html><body>Log in to continue</body></html>", "text/html; charset=utf-8")
            elif mode == "garbage":
                self._answer(200, b"this is not a checkpoint\n" * 100, "application/octet-stream")
            elif mode == "slow":
                server._stop.wait(server.slow_seconds)
                self._answer(200, body, "application/octet-stream")
            elif mode == "truncated":
                self._headers(200, len(body), "application/octet-stream")
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif mode == "no_length":  # body delimited by closing the connection
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
            elif mode == "trickle":
                self._headers(200, len(body), "application/octet-stream")
                step = max(len(body) // 20, 1)
                for start in range(0, len(body), step):
                    self.wfile.write(body[start : start + step])
                    server._stop.wait(0.05)
            elif mode == "drip":  # one byte every 20 ms, until the client gives up or the server stops
                self._headers(200, len(body), "application/octet-stream")
                self._until_stopped(lambda index: body[index % len(body) : index % len(body) + 1], 0.02)
            elif mode == "drip_headers":  # a header line without end, one byte every 20 ms
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
                self._until_stopped(lambda index: b"x", 0.02)
            elif mode == "stall_no_length":  # a body ended by closing the connection: a start, then nothing
                self._headers(200, None, "application/octet-stream")
                self.wfile.write(body[:1000])
                self.wfile.flush()
                server._stop.wait()
                self.close_connection = True
            elif mode == "endless":  # zeros without end, as fast as the client takes them
                self._headers(200, None, "application/octet-stream")
                self._until_stopped(lambda index: bytes(1 << 16), 0)
            elif mode == "gzip":  # the model, compressed although the client asked for identity
                self._answer(200, gzip.compress(body, compresslevel=1), "application/octet-stream", "gzip")
            elif mode == "unknown_encoding":
                self._answer(200, body, "application/octet-stream", "compress")
            elif mode == "gzip_bomb":
                self._answer(200, gzip_bomb(), "application/octet-stream", "gzip")
            elif mode == "huge_length":  # announces a body of a terabyte
                self._headers(200, 1 << 40, "application/octet-stream")
                self.wfile.write(body[:1000])
                self.close_connection = True
            else:
                self._answer(200, body, "application/octet-stream")

        def _until_stopped(self, piece, pause: float) -> None:
            index = 0
            try:
                while not server._stop.is_set():
                    self.wfile.write(piece(index))
                    self.wfile.flush()
                    index += 1
                    if pause:
                        server._stop.wait(pause)
            except OSError:  # the client gave up
                pass
            self.close_connection = True

        def _headers(self, status: int, length, content_type: str, encoding: str = "") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if encoding:
                self.send_header("Content-Encoding", encoding)
            if length is None:
                self.send_header("Connection", "close")
            else:
                self.send_header("Content-Length", str(length))
            self.end_headers()

        def _answer(self, status: int, body: bytes, content_type: str, encoding: str = "") -> None:
            self._headers(status, len(body), content_type, encoding)
            self.wfile.write(body)

    return Handler


class Payload:
    """A pickled object that creates the folder ``sentinel`` when unpickled (a stand-in for malicious code)."""

    def __init__(self, sentinel: os.PathLike):
        self.sentinel = os.fspath(sentinel)

    def __reduce__(self):
        return (os.mkdir, (self.sentinel,))


def sha256_of(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def construct_extractor(data_dir: str, use_res: bool, barrier, results) -> None:
    """Process body: point the package data folder to ``data_dir``, wait for the others, build the extractor.

    Puts ``("ok", model_path, sha256 of that file)`` or ``("error", repr)`` on ``results``.
    """
    try:
        from bob.learn.pytorch import pretrained
        from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor

        pretrained.DATA_DIR = data_dir
        barrier.wait(timeout=120)
        extractor = DltResNetExtractor(use_res=use_res)
        results.put(("ok", extractor.model_path, sha256_of(extractor.model_path), os.getpid()))
    except BaseException as error:  # reported to the parent test
        results.put(("error", repr(error), "", os.getpid()))


def fetch_in_process(url: str, target: str, deadline: float, ready) -> None:
    """Process body: fetch ``url`` to ``target`` (a slow download to be stopped, or raced); report on ``ready``."""
    from bob.learn.pytorch.fetch import FetchOptions, fetch

    try:
        fetch(url, target, options=FetchOptions(deadline=deadline, attempts=1, progress=False, min_rate=0))
        ready.put(("ok", os.path.getsize(target)))
    except BaseException as error:  # reported to the parent test
        ready.put(("error", str(error)))
