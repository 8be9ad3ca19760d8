"""The networks' frame body run by MNN with Winograd F(2x2, 3x3) convolutions (optional).

83% of the networks' arithmetic is in stride-1 3x3 convolutions. Winograd's
F(2x2, 3x3) algorithm computes them with 2.25 times fewer multiplications and
no more rounding than the direct convolution; MNN has tuned CPU kernels for it,
which ONNX Runtime and PyTorch lack. Measured on the 2-core AVX2 development
machine (``doc/performance.rst``), the frame body runs 1.2 to 1.45 times
faster than with ONNX Runtime, within 2e-5 of the eager frame features
relative to their largest value. The MNN wheels on PyPI (3.6.1) hold AVX2 and
FMA kernels but no AVX-512 ones (MNN's AVX-512 code is a build option they
leave out), so on AVX-512 processors ``backend="auto"`` tries ONNX Runtime
first (:func:`.fast.auto_backends`).

The frame body is exported to ONNX (:func:`.ort_backend.export_frame_body`),
converted to MNN's format in a temporary folder (the converted network, about
40 MB, is kept in memory) and loaded with

* ``precision="high"``: float32 arithmetic throughout;
* the Winograd hint at 1, which limits MNN to F(2x2, 3x3). Its default also
  uses F(4x4, 3x3) and F(6x6, 3x3), whose larger transforms round much more:
  the embeddings then moved by up to 3.6e-4 from the original's, 36 times
  the tolerance.

MNN's worker threads belong to one process-wide pool, which a child
process made by ``fork`` inherits without its threads: there, a
multi-threaded MNN network, even a new one, would wait for them forever. A
runner used in such a child therefore loads its network again, on one
thread, and says so in a warning; processes started with ``spawn`` or
``forkserver`` are unaffected.

MNN is part of the ``fast`` extra (``pip install "bob.learn.pytorch[fast]"``).
Only its runtime and its converter's compiled function are used: MNN's
Python command-line wrappers (``MNN.tools``) send usage logs over the network
and are never imported here.
"""
import contextlib
import ctypes
import functools
import importlib.util
import logging
import os
import sys
import tempfile
import threading
from typing import Any, Callable, Iterator, List, Optional, Tuple, TypeVar

import numpy
import torch
from torch import nn

from .ort_backend import INPUT_NAME, OUTPUT_NAME, export_frame_body

__all__ = ["available", "convert_onnx", "MnnFrameRunner", "build_mnn_runner", "WINOGRAD_HINT"]

#: MNN's ``Interpreter::HintMode`` number of the Winograd setting.
_WINOGRAD_HINT_MODE = 3
#: Winograd setting: 0 disables Winograd, 1 and 2 allow only F(2x2, 3x3), 3 (MNN's default) up to F(6x6, 3x3).
WINOGRAD_HINT = 1

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Process that started MNN's worker threads (None before a multi-threaded runner exists).
_threads_started_in: Optional[int] = None


def available() -> bool:
    """True when MNN (runtime and converter) and ``onnx`` (needed to export) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("MNN", "_tools", "onnx"))


@contextlib.contextmanager
def _native_output_to(sink: Any) -> Iterator[None]:
    """Send whatever is written to file descriptors 1 and 2 (C code included) into ``sink`` while inside.

    MNN prints banners and conversion progress from C++ to the standard
    output, where they would mix with a command's results. The redirection
    holds for the whole process, so what other threads write meanwhile (at
    most the second or two a build takes) goes to the sink too.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # a process without standard output or error (a daemon): nothing to keep clean
        yield
        return
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        _flush_c_stdio()  # what C code buffered goes to the sink, not to the restored streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to flush through (not POSIX)
        pass


def _quietly(function: Callable[..., T], *args: Any, **kwargs: Any) -> Tuple[T, str]:
    """``function(*args, **kwargs)`` with its native output captured; returns the result and that output.

    An exception is re-raised with the captured output appended to its message.
    """
    with tempfile.TemporaryFile() as sink:
        try:
            with _native_output_to(sink):
                result = function(*args, **kwargs)
        except Exception as exc:
            sink.seek(0)
            output = _one_line(sink.read().decode(errors="replace"))
            raise RuntimeError(f"{type(exc).__name__}: {exc}; MNN said: {output or '(nothing)'}") from exc
        sink.seek(0)
        return result, sink.read().decode(errors="replace")


@functools.lru_cache(maxsize=None)
def _import_mnn() -> Tuple[Any, Any, Any]:
    """MNN's ``expr`` and ``nn`` modules and its converter module, imported (once) without their banner."""

    def load() -> Tuple[Any, Any, Any]:
        import _tools  # the converter's compiled module; MNN.tools would load the network logger
        import MNN.expr
        import MNN.nn

        return MNN.expr, MNN.nn, _tools

    return _quietly(load)[0]


def convert_onnx(onnx_model: bytes) -> bytes:
    """Convert an ONNX model to MNN's format (in a temporary folder) and return it.

    Raises
    ------
    RuntimeError
        If the converter wrote no model (its messages are in the error).
    """
    _, _, tools = _import_mnn()
    with tempfile.TemporaryDirectory(prefix="bob-mnn-") as folder:
        source, target = os.path.join(folder, "frame_body.onnx"), os.path.join(folder, "frame_body.mnn")
        with open(source, "wb") as stream:
            stream.write(onnx_model)
        arguments: List[str] = ["mnnconvert", "-f", "ONNX", "--modelFile", source, "--MNNModel", target]
        _, output = _quietly(tools.mnnconvert, arguments + ["--bizCode", "bob.learn.pytorch"])
        if not os.path.isfile(target) or os.path.getsize(target) == 0:
            raise RuntimeError(f"MNN could not convert the exported network: {_one_line(output) or 'no message'}")
        with open(target, "rb") as stream:
            return stream.read()


class MnnFrameRunner:
    """Callable running a converted frame body on the CPU with MNN.

    Parameters
    ----------
    model : bytes
        MNN model from :func:`convert_onnx`. It is kept, so that a child
        process made by ``fork`` can load it again (see below).
    threads : int
        Threads of MNN's CPU backend (the extractor passes :func:`torch.get_num_threads`).

    Notes
    -----
    One MNN module must not run two inputs at once, so calls from several
    threads take turns (each call already uses all the threads given).
    MNN's worker threads do not spin between calls.

    In a child process made by ``fork`` after MNN's worker threads were
    started, which they cannot follow, the first call loads the model again
    on one thread (with a warning) and uses that; the results are the same
    to float32 rounding.
    """

    backend = "mnn"

    def __init__(self, model: bytes, threads: int) -> None:
        self._expr, _, _ = _import_mnn()
        self._model = model
        self.threads = max(1, int(threads))
        self._pid = os.getpid()
        self._runtime, self._module = _load_module(model, _usable_threads(self.threads))
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Frame features ``(N, C, T', 1)`` of a float32 CPU batch ``(N, 1, T, F)``."""
        array = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        expr = self._expr
        with self._lock:
            if self._pid != os.getpid():
                self._reload_after_fork()
            frames = self._module.forward(expr.const(array, list(array.shape), expr.NCHW))
            if frames.data_format != expr.NCHW:
                frames = expr.convert(frames, expr.NCHW)
            result = numpy.array(frames.read())  # read() is a view of MNN's buffer, reused by the next call
        return torch.from_numpy(result)

    def _reload_after_fork(self) -> None:
        self._runtime, self._module = _load_module(self._model, _usable_threads(self.threads))
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"MnnFrameRunner(threads={self.threads}, winograd_hint={WINOGRAD_HINT})"


def _usable_threads(threads: int) -> int:
    """``threads``, or 1 (with a warning) in a forked child whose parent started MNN's worker threads.

    The first multi-threaded runner claims the pool for its process.
    """
    global _threads_started_in
    if threads == 1:
        return 1
    if _threads_started_in is None:
        _threads_started_in = os.getpid()
    if _threads_started_in == os.getpid():
        return threads
    logger.warning(
        "MNN's worker threads were started in process %d, from which this process %d was forked; they "
        "cannot run here, so MNN runs on one thread in this process (the 'spawn' start method keeps %d)",
        _threads_started_in,
        os.getpid(),
        threads,
    )
    return 1


def _load_module(model: bytes, threads: int) -> Tuple[Any, Any]:
    """MNN runtime and module of ``model`` on ``threads`` threads, float32 and Winograd F(2x2, 3x3) only."""
    _, mnn_nn, _ = _import_mnn()
    config = {"backend": "CPU", "numThread": threads, "precision": "high"}
    with tempfile.TemporaryDirectory(prefix="bob-mnn-") as folder:
        path = os.path.join(folder, "frame_body.mnn")
        with open(path, "wb") as stream:
            stream.write(model)

        def load() -> Tuple[Any, Any]:
            runtime = mnn_nn.create_runtime_manager((config,))
            runtime.set_hint(_WINOGRAD_HINT_MODE, WINOGRAD_HINT)
            return runtime, mnn_nn.load_module_from_file(path, [INPUT_NAME], [OUTPUT_NAME], runtime_manager=runtime)

        return _quietly(load)[0]


def build_mnn_runner(body: nn.Module, onnx_model: Optional[bytes] = None) -> MnnFrameRunner:
    """Export a frame body to ONNX, convert it for MNN and load it (see :class:`MnnFrameRunner`).

    Uses :func:`torch.get_num_threads` threads.

    Parameters
    ----------
    body : torch.nn.Module
        The eval-mode frame body.
    onnx_model : bytes, optional
        ``export_frame_body(body)``, when it was already made; else it is made here.

    Raises
    ------
    ImportError
        If MNN or ``onnx`` is not installed.
    RuntimeError
        If the conversion or the loading fails.
    """
    if not available():
        raise ImportError('MNN is not installed: pip install "bob.learn.pytorch[fast]"')
    return MnnFrameRunner(convert_onnx(onnx_model or export_frame_body(body)), torch.get_num_threads())
