"""The networks' frame body run by ONNX Runtime (optional: needs ``onnx`` and ``onnxruntime``).

The frame body (everything before the statistics pooling) is exported once
with the TorchScript-based ONNX exporter, the time and batch axes left free,
and handed to an ONNX Runtime session on the CPU. ONNX Runtime folds the
BatchNorms, fuses ReLUs and residual additions into its convolutions and runs
them in its blocked ``NCHWc`` layout. On the 2-core development machines
this is about 1.6 times faster than the eager network (1.5 to 1.7 on AVX2)
and, on AVX-512, 1.3 times faster than the frozen TorchScript graph
(``doc/performance.rst``), within 1e-5 of the eager frame features relative
to their largest value.

Install the two packages with ``pip install "bob.learn.pytorch[fast]"``;
without them :func:`available` is False and
:mod:`~bob.learn.pytorch.preprocessor.audio.fast` uses TorchScript.
"""
import importlib.util
import io
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["available", "export_frame_body", "OnnxFrameRunner", "build_onnxruntime_runner"]

#: Input shape used for the export; batch and time stay free in the exported graph.
EXPORT_SHAPE = (1, 1, 300, 257)
#: ONNX operator set of the export (supported by onnxruntime 1.15 and later).
OPSET = 17
INPUT_NAME = "spectrogram"
OUTPUT_NAME = "frames"


def available() -> bool:
    """True when both ``onnx`` (needed to export) and ``onnxruntime`` are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def export_frame_body(body: nn.Module, example_shape: Sequence[int] = EXPORT_SHAPE) -> bytes:
    """Serialise an eval-mode CPU frame body as an ONNX model.

    Parameters
    ----------
    body : torch.nn.Module
        Module in evaluation mode, on the CPU, mapping ``(N, 1, T, F)`` to
        ``(N, C, T', 1)`` (:class:`~bob.learn.pytorch.preprocessor.audio.fast.FrameFeatures`).
    example_shape : sequence of int
        Shape of the tracing input; the batch and time axes stay dynamic.

    Returns
    -------
    bytes
        The ONNX model, weights included.
    """
    if body.training:
        raise ValueError("export_frame_body needs a module in eval mode (call .eval() first)")
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the torch.export one, which
        # needs onnxscript; both write the same operators for these plain convolutional nets.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            body,
            (torch.zeros(tuple(example_shape)),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "time", 3: "bins"}, OUTPUT_NAME: {0: "batch", 2: "steps"}},
        )
    return buffer.getvalue()


class OnnxFrameRunner:
    """Callable running an exported frame body on the CPU with ONNX Runtime.

    Parameters
    ----------
    model : bytes
        ONNX model from :func:`export_frame_body`.
    threads : int
        Intra-operator threads (the extractor passes :func:`torch.get_num_threads`).

    Notes
    -----
    The session's worker threads sleep between calls instead of spinning
    (ONNX Runtime's default). Spinning made single calls no faster here, and
    it slowed the PyTorch work running beside it in the same process by up to
    60 %, as it would slow the other workers of a parallel job. Calls from
    several threads are safe: they share the session.
    """

    backend = "onnxruntime"

    def __init__(self, model: bytes, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: the session's warnings are not the user's business
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = options.intra_op_num_threads
        self._session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Frame features ``(N, C, T', 1)`` of a float32 CPU batch ``(N, 1, T, F)``."""
        array = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        (frames,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(frames)

    def __repr__(self) -> str:
        return f"OnnxFrameRunner(threads={self.threads})"


def build_onnxruntime_runner(body: nn.Module, onnx_model: Optional[bytes] = None) -> OnnxFrameRunner:
    """Export a frame body (see :func:`export_frame_body`) and open an ONNX Runtime session for it.

    Uses :func:`torch.get_num_threads` intra-operator threads.

    Parameters
    ----------
    body : torch.nn.Module
        The eval-mode frame body.
    onnx_model : bytes, optional
        ``export_frame_body(body)``, when it was already made; else it is made here.

    Raises
    ------
    ImportError
        If ``onnx`` or ``onnxruntime`` is not installed.
    """
    if not available():
        raise ImportError('ONNX Runtime is not installed: pip install "bob.learn.pytorch[fast]"')
    return OnnxFrameRunner(onnx_model or export_frame_body(body), torch.get_num_threads())
