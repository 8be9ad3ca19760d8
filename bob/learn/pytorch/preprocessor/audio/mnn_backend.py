"""The networks' frame body run by MNN with Winograd F(2x2, 3x3) convolutions (optional).

83% of the networks' arithmetic is in stride-1 3x3 convolutions. Winograd's
F(2x2, 3x3) algorithm computes them with 2.25 times fewer multiplications and
no more rounding than the direct convolution; MNN has tuned CPU kernels for it
(AVX2, AVX-512 and ARM), which ONNX Runtime and PyTorch lack. Measured on the
2-core AVX2 development machine (``doc/performance.rst``), the frame body runs
1.2 to 1.45 times faster than with ONNX Runtime, within 2e-5 of the eager frame
features relative to their largest value.

The frame body is exported to ONNX (:func:`.ort_backend.export_frame_body`),
converted to MNN's format in a temporary folder and loaded with

* ``precision="high"``: float32 arithmetic throughout;
* the Winograd hint at 1, which limits MNN to F(2x2, 3x3). Its default also
  uses F(4x4, 3x3) and F(6x6, 3x3), whose larger transforms round much more:
  the embeddings then moved by up to 3.6e-4 from the original's, 36 times
  the tolerance.

MNN is part of the ``fast`` extra (``pip install "bob.learn.pytorch[fast]"``).
Only its runtime and its converter's compiled function are used: MNN's
Python command-line wrappers (``MNN.tools``) send usage logs over the network
and are never imported here.
"""
import contextlib
import ctypes
import importlib.util
import os
import sys
import tempfile
import threading
from typing import Any, Callable, Iterator, List, Tuple, TypeVar

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


def available() -> bool:
    """True when MNN (runtime and converter) and ``onnx`` (needed to export) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("MNN", "_tools", "onnx"))


@contextlib.contextmanager
def _native_output_to(sink: Any) -> Iterator[None]:
    """Send whatever is written to file descriptors 1 and 2 (C code included) into ``sink`` while inside.

    MNN prints banners and conversion progress from C++ to the standard
    output, where they would mix with a command's results.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
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


def _import_mnn() -> Tuple[Any, Any, Any]:
    """MNN's ``expr`` and ``nn`` modules and its converter module, imported without their banner."""

    def load() -> Tuple[Any, Any, Any]:
        import _tools  # the converter's compiled module; MNN.tools would load the network logger
        import MNN.expr
        import MNN.nn

        return MNN.expr, MNN.nn, _tools

    return _quietly(load)[0]


def convert_onnx(onnx_model: bytes, folder: str) -> str:
    """Convert an ONNX model to MNN's format in ``folder``; return the new file's path.

    Raises
    ------
    RuntimeError
        If the converter wrote no model (its messages are in the error).
    """
    _, _, tools = _import_mnn()
    source, target = os.path.join(folder, "frame_body.onnx"), os.path.join(folder, "frame_body.mnn")
    with open(source, "wb") as stream:
        stream.write(onnx_model)
    arguments: List[str] = ["mnnconvert", "-f", "ONNX", "--modelFile", source, "--MNNModel", target]
    _, output = _quietly(tools.mnnconvert, arguments + ["--bizCode", "bob.learn.pytorch"])
    if not os.path.isfile(target) or os.path.getsize(target) == 0:
        raise RuntimeError(f"MNN could not convert the exported network: {_one_line(output) or 'no message'}")
    return target


class MnnFrameRunner:
    """Callable running a converted frame body on the CPU with MNN.

    Parameters
    ----------
    model_path : str
        MNN model from :func:`convert_onnx`; read at construction, so the
        file may be removed afterwards.
    threads : int
        Threads of MNN's CPU backend (the extractor passes :func:`torch.get_num_threads`).

    Notes
    -----
    One MNN module must not run two inputs at once, so calls from several
    threads take turns (each call already uses all the threads given).
    MNN's worker threads do not spin between calls.
    """

    backend = "mnn"

    def __init__(self, model_path: str, threads: int) -> None:
        self._expr, mnn_nn, _ = _import_mnn()
        self.threads = max(1, int(threads))
        config = {"backend": "CPU", "numThread": self.threads, "precision": "high"}

        def load() -> Any:
            runtime = mnn_nn.create_runtime_manager((config,))
            runtime.set_hint(_WINOGRAD_HINT_MODE, WINOGRAD_HINT)
            module = mnn_nn.load_module_from_file(model_path, [INPUT_NAME], [OUTPUT_NAME], runtime_manager=runtime)
            return runtime, module

        (self._runtime, self._module), _ = _quietly(load)
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Frame features ``(N, C, T', 1)`` of a float32 CPU batch ``(N, 1, T, F)``."""
        array = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        expr = self._expr
        with self._lock:
            frames = self._module.forward(expr.const(array, list(array.shape), expr.NCHW))
            if frames.data_format != expr.NCHW:
                frames = expr.convert(frames, expr.NCHW)
            result = numpy.array(frames.read())  # read() is a view of MNN's buffer, reused by the next call
        return torch.from_numpy(result)

    def __repr__(self) -> str:
        return f"MnnFrameRunner(threads={self.threads}, winograd_hint={WINOGRAD_HINT})"


def build_mnn_runner(body: nn.Module) -> MnnFrameRunner:
    """Export a frame body to ONNX, convert it for MNN and load it (see :class:`MnnFrameRunner`).

    Uses :func:`torch.get_num_threads` threads.

    Raises
    ------
    ImportError
        If MNN or ``onnx`` is not installed.
    RuntimeError
        If the conversion or the loading fails.
    """
    if not available():
        raise ImportError('MNN is not installed: pip install "bob.learn.pytorch[fast]"')
    with tempfile.TemporaryDirectory(prefix="bob-mnn-") as folder:
        return MnnFrameRunner(convert_onnx(export_frame_body(body), folder), torch.get_num_threads())
