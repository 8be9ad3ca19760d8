"""Networks exported to ONNX, the exchange format: the frame body for ONNX Runtime, the whole embedding network for users.

Both exports use PyTorch's ``torch.export``-based ONNX exporter
(:func:`torch.onnx.export` with ``dynamo=True``, which needs ``onnxscript``)
and leave the batch and time axes free, so that one file serves every input
length. The exporter then folds each BatchNorm into its convolution.

Exporting traces the network symbolically, which takes seconds. The graph
depends on the architecture only, so the frame body's graph is kept per
process for each architecture (its weights removed, about 0.5 MB), and a
network of an architecture already exported gets a copy with its own weights,
folded again, in a fraction of a second. Whatever the graph, the runtime that
uses it is checked against the eager network before it is used
(:func:`bob.learn.pytorch.runtimes.build_runtime`), and the checked frame body
is kept on disk (:mod:`bob.learn.pytorch.export_cache`), so that a network is
exported once per machine rather than once per process.

The exporter is not safe to run from two threads at once: the exports of a
process take turns. A network that ``torch.export`` cannot trace raises
:class:`~bob.learn.pytorch.errors.ExportError` with one line naming the
network and the exporter's reason; the exporter's full report is logged at
DEBUG level (``-vvv`` on the command line).
"""
import contextlib
import logging
import re
import threading
import warnings
from typing import Any, BinaryIO, Dict, Hashable, Iterator, Union

import torch
from torch import nn

from .architectures.utils import SpeakerEmbeddingNet
from .errors import ExportError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "EMBEDDING_NAME",
    "OPSET",
    "export_frame_body",
    "export_embedding_network",
    "check_exported_embedding",
    "export_settings",
]

logger = logging.getLogger(__name__)

#: ONNX operator set of the exports (the exporter's own; supported by onnxruntime 1.14 and later).
OPSET = 18
#: Name of the input of both exports: the standardised spectrogram ``(N, 1, T, F)``.
INPUT_NAME = "spectrogram"
#: Name of the frame body's output ``(N, C, T', 1)``.
OUTPUT_NAME = "frames"
#: Name of the embedding network's output ``(N, D)``.
EMBEDDING_NAME = "embedding"
#: Shape of the tracing input, batch and frames; both axes stay free in the exported graph
#: (a batch of one would be taken for a constant).
EXPORT_BATCH, EXPORT_FRAMES = 2, 300
#: How every export is made: the torch.export-based exporter, this operator set, no report or check files.
_EXPORTER_OPTIONS = {"dynamo": True, "opset_version": OPSET, "verify": False, "report": False, "verbose": False}
#: The exporter's logger, which notes once per export that torchvision's operators (unused here) are missing.
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"
#: torch's logger that warns, while a network that cannot be traced is exported, about code it cannot find.
_TRACING_LOGGER = "torch.fx.experimental.symbolic_shapes"
#: Colour codes of the exporter's messages (kept out of the one line reported).
_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")

#: Exports of this process take turns: the exporter keeps tracing state of its own (two exports at once fail).
_export_lock = threading.RLock()

#: Weightless frame-body graphs (serialized ONNX), by architecture; see :func:`_architecture_key`.
_frame_body_graphs: Dict[Hashable, bytes] = {}
_graphs_lock = threading.Lock()


class _NetworkMethod(nn.Module):
    """One method of a network (``forward_frames`` or ``forward_emb``) as the forward of a module of its own."""

    def __init__(self, network: SpeakerEmbeddingNet, method: str) -> None:
        super().__init__()
        self.network = network
        self.method = method
        self.train(network.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.network, self.method)(x)


class _TorchvisionNotes(logging.Filter):
    """Drops the exporter's log lines about torchvision's operators."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision" not in record.getMessage()


class _TracingNotes(logging.Filter):
    """Turns torch's tracing warnings into DEBUG records of this module: a failed export is reported once, by us."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            logger.debug("torch.export: %s", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _exporter_notes_silenced() -> Iterator[None]:
    """Hide the exporter's notes that are not the user's business, for the time of one export.

    They are its warnings about internals (deprecations inside torch, tracing
    notes), its log lines about torchvision's operators and the tracer's
    warnings about a network it cannot trace (kept at DEBUG level).
    """
    filters = [(logging.getLogger(_REGISTRATION_LOGGER), _TorchvisionNotes()), (logging.getLogger(_TRACING_LOGGER), _TracingNotes())]
    for target, notes in filters:
        target.addFilter(notes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for target, notes in filters:
            target.removeFilter(notes)


def _reason(error: BaseException) -> str:
    """The first meaningful line of the exporter's error: that of its root cause, without colours."""
    root = error
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    lines = [line.strip() for line in _ANSI_CODES.sub("", str(root)).splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0]}" if lines else type(root).__name__


def _export_error(module: nn.Module, error: BaseException) -> ExportError:
    """One line naming the network that could not be exported and why; the exporter's whole report at DEBUG level."""
    network = getattr(module, "network", module)
    logger.debug("the ONNX exporter's report on %s:\n%s", type(network).__name__, error, exc_info=error)
    return ExportError(f"torch.export cannot trace the network {type(network).__name__} ({_reason(error)})")


def _export(module: nn.Module, bins: int, output: str, optimize: bool, free_bins: bool = False) -> Any:
    """The ``torch.onnx.ONNXProgram`` of an eval-mode module, batch and time axes free (and frequency, if asked)."""
    if module.training:
        raise ValueError("export needs a network in eval mode (call .eval() first)")
    import torch.onnx  # the exporter (and onnxscript) are imported only when something is exported

    example = torch.zeros((EXPORT_BATCH, 1, EXPORT_FRAMES, bins), device=next(module.parameters()).device)
    free = torch.export.Dim.DYNAMIC
    with _export_lock, torch.no_grad(), _exporter_notes_silenced():
        try:
            return torch.onnx.export(
                module,
                (example,),
                optimize=optimize,
                input_names=[INPUT_NAME],
                output_names=[output],
                dynamic_shapes=({0: free, 2: free, **({3: free} if free_bins else {})},),
                **_EXPORTER_OPTIONS,
            )
        except torch.onnx.OnnxExporterError as error:
            raise _export_error(module, error) from None


def _architecture_key(network: SpeakerEmbeddingNet, bins: int) -> Hashable:
    """What the frame body's graph depends on: the class, the layers and the shapes of the weights."""
    shapes = tuple((name, tuple(value.shape), str(value.dtype)) for name, value in network.state_dict().items())
    return type(network), repr(network), shapes, bins


def _weights_by_initializer(network: SpeakerEmbeddingNet) -> Dict[str, torch.Tensor]:
    """The network's state under the names of the frame body's initializers.

    The exporter names each weight's initializer by its state-dict key (the
    names :meth:`torch.onnx.ONNXProgram.apply_weights` relies on), here under
    the wrapper's ``network.`` prefix.
    """
    return {f"network.{name}": value for name, value in network.state_dict().items()}


def _weightless_frame_body(network: SpeakerEmbeddingNet, bins: int) -> bytes:
    """The frame body's unoptimised graph with the network's weights left out, made once per architecture."""
    import onnx_ir

    key = _architecture_key(network, bins)
    with _graphs_lock:
        graph = _frame_body_graphs.get(key)
    if graph is None:
        body = _NetworkMethod(network, "forward_frames")
        proto = onnx_ir.serde.serialize_model(_export(body, bins, OUTPUT_NAME, False, free_bins=True).model)
        weights = _weights_by_initializer(network)
        for initializer in proto.graph.initializer:
            if initializer.name in weights:
                initializer.ClearField("raw_data")
        graph = proto.SerializeToString()
        with _graphs_lock:
            _frame_body_graphs[key] = graph
    return graph


def export_frame_body(network: SpeakerEmbeddingNet, bins: int = 257) -> bytes:
    """The eval-mode network's frame body as an ONNX model (``(N, 1, T, F)`` to ``(N, C, T', 1)``).

    Batch, time and frequency axes are free (the networks accept a few more
    frequency bins than ``bins``: the width left after their last
    convolution is 1). The graph of an architecture is traced once
    per process; each call fills a copy with the network's weights and folds
    its BatchNorms into the convolutions (``onnxscript``'s optimizer, as the
    exporter does).
    """
    import onnx
    import onnx_ir
    import onnxscript.optimizer

    model = onnx_ir.serde.deserialize_model(onnx.load_from_string(_weightless_frame_body(network, bins)))
    weights = _weights_by_initializer(network)
    for name, initializer in model.graph.initializers.items():
        if name in weights:
            initializer.const_value = onnx_ir.tensor(weights[name].detach().cpu().numpy(), name=name)
    with _export_lock, _exporter_notes_silenced():
        onnxscript.optimizer.optimize(model)
    return onnx_ir.serde.serialize_model(model).SerializeToString()


def export_settings() -> Dict[str, Any]:
    """Everything about how :func:`export_frame_body` exports that is not the network: for the cache's key."""
    return {
        "options": dict(_EXPORTER_OPTIONS),
        "example": [EXPORT_BATCH, EXPORT_FRAMES],
        "names": [INPUT_NAME, OUTPUT_NAME],
        "free": ["batch", "time", "frequency"],
        "optimizer": "onnxscript.optimizer.optimize",
    }


def export_embedding_network(network: SpeakerEmbeddingNet, target: Union[BinaryIO, str], bins: int = 257) -> None:
    """Write the eval-mode network's embedding function as an ONNX model.

    The model maps the standardised spectrogram ``(N, 1, T, bins)`` (float32,
    named :data:`INPUT_NAME`; each frequency column of each utterance scaled
    to zero mean and unit variance, see
    :func:`~bob.learn.pytorch.embedding.standardize`) to the L2-normalised
    embeddings ``(N, D)`` (named :data:`EMBEDDING_NAME`). Batch and time axes
    are free.

    Parameters
    ----------
    network : SpeakerEmbeddingNet
        The network, in eval mode.
    target : str or binary file
        Where to write the model.
    bins : int
        Frequency bins of the network's input.
    """
    program = _export(_NetworkMethod(network, "forward_emb"), bins, EMBEDDING_NAME, True)
    data = program.model_proto.SerializeToString()
    if isinstance(target, str):
        with open(target, "wb") as stream:
            stream.write(data)
    else:
        target.write(data)


def check_exported_embedding(model: bytes, network: SpeakerEmbeddingNet, bins: int = 257) -> float:
    """Largest difference between an exported embedding network run by ONNX Runtime and the eager network.

    Checked on two random standardised inputs other than the export's shape
    (two utterances of 173 frames, one of 411), so that the free axes are
    exercised.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    largest = 0.0
    for shape in ((2, 1, 173, bins), (1, 1, 411, bins)):
        probe = torch.randn(shape, generator=generator)
        (exported,) = session.run([EMBEDDING_NAME], {INPUT_NAME: probe.numpy()})
        with torch.inference_mode():
            eager = network.forward_emb(probe.to(next(network.parameters()).device)).cpu()
        largest = max(largest, float((torch.from_numpy(exported) - eager).abs().max()))
    return largest
