"""The frame body run by MNN with Winograd F(2x2, 3x3) convolutions: an opt-in runtime for long recordings.

Most of the networks' arithmetic is in stride-1 3x3 convolutions, which
Winograd's F(2x2, 3x3) algorithm computes with 2.25 times fewer
multiplications and no more rounding than a direct convolution. MNN
(Alibaba's inference engine, BSD-licensed, ``pip install
"bob.learn.pytorch[mnn]"``) has CPU kernels for it, which ONNX Runtime and
PyTorch lack; doc/performance.rst measures what that buys.

The frame body is exported to ONNX
(:func:`~bob.learn.pytorch.onnx_export.export_frame_body`), converted to MNN's
format in a temporary folder and loaded with float32 arithmetic and Winograd
limited to F(2x2, 3x3): MNN's default larger tiles (F(4x4, 3x3) and
F(6x6, 3x3)) round too much for the runtimes' tolerance.

MNN is opt-in (``backend="mnn"``), never chosen by ``"auto"``, because of two
properties of MNN that this package does not hide:

* its C++ code prints banners and conversion notes on the standard output;
* its worker threads belong to one pool per process, which a child made by
  ``fork`` does not inherit: an MNN runtime used in a child forked after any
  multi-threaded MNN runtime was built would wait forever (the pipeline raises
  ``RuntimeError`` there instead, see ``runtimes.check_forked_child``). Build the extractor in
  the child, start children with ``spawn`` or ``forkserver`` (as dask does),
  or use ONNX Runtime.

Only MNN's runtime and its converter's compiled module are used: MNN's
Python command-line wrappers (``MNN.tools``) send usage logs over the network
and are never imported.
"""
import importlib.util
import os
import tempfile
import threading
from typing import Any

import numpy
import torch

from .onnx_export import INPUT_NAME, OUTPUT_NAME

__all__ = ["MnnRuntime", "mnn_available", "WINOGRAD_HINT"]

#: MNN's ``Interpreter::HintMode`` number of the Winograd setting.
_WINOGRAD_HINT_MODE = 3
#: Winograd setting: 0 disables Winograd, 1 allows only F(2x2, 3x3), 3 (MNN's default) up to F(6x6, 3x3).
WINOGRAD_HINT = 1


def mnn_available() -> bool:
    """True when MNN's runtime and converter are installed (the ``mnn`` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in ("MNN", "_tools"))


def _convert(onnx_model: bytes, folder: str) -> str:
    """Convert an ONNX model to MNN's format in ``folder``; the path of the result."""
    import _tools  # the converter's compiled module (MNN.tools would load the usage logger)

    source, target = os.path.join(folder, "frame_body.onnx"), os.path.join(folder, "frame_body.mnn")
    with open(source, "wb") as stream:
        stream.write(onnx_model)
    arguments = ["mnnconvert", "-f", "ONNX", "--modelFile", source, "--MNNModel", target]
    _tools.mnnconvert(arguments + ["--bizCode", "bob.learn.pytorch"])
    if not os.path.isfile(target) or os.path.getsize(target) == 0:
        raise RuntimeError("MNN's converter wrote no model (its messages are on the standard output)")
    return target


class MnnRuntime:
    """The exported frame body in an MNN module on the CPU.

    Parameters
    ----------
    model : bytes
        The frame body as ONNX (from
        :func:`~bob.learn.pytorch.onnx_export.export_frame_body`), converted
        here to MNN's format.
    threads : int
        Threads of MNN's CPU backend (its process-wide worker pool).

    Notes
    -----
    One MNN module must not run two inputs at once, so calls from several
    threads take turns (each call uses all the threads given). See the module
    notes on ``fork``.
    """

    name = "mnn"

    def __init__(self, model: bytes, threads: int) -> None:
        import MNN.expr
        import MNN.nn

        self.threads = max(1, int(threads))
        self._expr = MNN.expr
        config = {"backend": "CPU", "numThread": self.threads, "precision": "high"}
        self._manager = MNN.nn.create_runtime_manager((config,))
        self._manager.set_hint(_WINOGRAD_HINT_MODE, WINOGRAD_HINT)
        with tempfile.TemporaryDirectory(prefix="bob-mnn-") as folder:
            path = _convert(model, folder)
            self._module: Any = MNN.nn.load_module_from_file(
                path, [INPUT_NAME], [OUTPUT_NAME], runtime_manager=self._manager
            )
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        expr = self._expr
        with self._lock:
            frames = self._module.forward(expr.const(array, list(array.shape), expr.NCHW))
            if frames.data_format != expr.NCHW:
                frames = expr.convert(frames, expr.NCHW)
            result = numpy.array(frames.read())  # read() is a view of MNN's buffer, reused by the next call
        return torch.from_numpy(result)

    def __repr__(self) -> str:
        return f"MnnRuntime(threads={self.threads}, winograd_hint={WINOGRAD_HINT})"
