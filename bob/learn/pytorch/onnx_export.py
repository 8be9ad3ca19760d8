"""Networks exported to ONNX, the exchange format: the frame body for ONNX Runtime, the whole embedding network for users.

Both exports leave the batch and time axes free, so one file serves every
input length. They use :func:`torch.onnx.export` with its TorchScript-based
tracer (``dynamo=False``): the ``torch.export`` based exporter writes the
same operators for these plain convolutional networks but needs
``onnxscript`` and is several times slower, a cost every model load would
pay (measured in doc/performance.rst, "Runtimes tried and not kept").
"""
import io
import warnings
from typing import BinaryIO, Dict, Union

import torch
from torch import nn

from .architectures.utils import SpeakerEmbeddingNet

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "EMBEDDING_NAME",
    "OPSET",
    "FrameBody",
    "export_frame_body",
    "export_embedding_network",
    "check_exported_embedding",
]

#: ONNX operator set of the exports (supported by onnxruntime 1.15 and later).
OPSET = 17
#: Name of the input of both exports: the standardised spectrogram ``(N, 1, T, F)``.
INPUT_NAME = "spectrogram"
#: Name of the frame body's output ``(N, C, T', 1)``.
OUTPUT_NAME = "frames"
#: Name of the embedding network's output ``(N, D)``.
EMBEDDING_NAME = "embedding"
#: Frames of the tracing input; the time axis stays free in the exported graph.
EXPORT_FRAMES = 300


class FrameBody(nn.Module):
    """A network's ``forward_frames`` (everything before the pooling) as a module of its own."""

    def __init__(self, network: SpeakerEmbeddingNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_frames(x)


class _Embedding(nn.Module):
    """A network's ``forward_emb``, whatever its ``net_type``."""

    def __init__(self, network: SpeakerEmbeddingNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_emb(x)


def _export(
    module: nn.Module,
    bins: int,
    output: str,
    axes: Dict[int, str],
    target: Union[BinaryIO, str],
    free_bins: bool = False,
) -> None:
    if module.training:
        raise ValueError("export needs a network in eval mode (call .eval() first)")
    example = torch.zeros((1, 1, EXPORT_FRAMES, bins), device=next(module.parameters()).device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's deprecation and tracing notes (see the module docstring)
        torch.onnx.export(
            module,
            (example,),
            target,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[output],
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "time", **({3: "bins"} if free_bins else {})}, output: axes},
        )


def export_frame_body(network: SpeakerEmbeddingNet, bins: int = 257) -> bytes:
    """The eval-mode network's frame body as an ONNX model (``(N, 1, T, F)`` to ``(N, C, T', 1)``).

    The number of frequency bins ``F`` stays free too, as the networks accept
    a few more than ``bins`` (the width left after their last convolution is 1).
    """
    buffer = io.BytesIO()
    _export(FrameBody(network).eval(), bins, OUTPUT_NAME, {0: "batch", 2: "steps"}, buffer, free_bins=True)
    return buffer.getvalue()


def export_embedding_network(network: SpeakerEmbeddingNet, target: Union[BinaryIO, str], bins: int = 257) -> None:
    """Write the eval-mode network's embedding function as an ONNX model.

    The model maps the standardised spectrogram ``(N, 1, T, bins)`` (float32,
    named :data:`INPUT_NAME`; each frequency column of each utterance scaled
    to zero mean and unit variance, see
    :func:`~bob.learn.pytorch.embedding.standardize`) to the L2-normalised
    embeddings ``(N, D)`` (named :data:`EMBEDDING_NAME`).

    Parameters
    ----------
    network : SpeakerEmbeddingNet
        The network, in eval mode.
    target : str or binary file
        Where to write the model.
    bins : int
        Frequency bins of the network's input.
    """
    _export(_Embedding(network).eval(), bins, EMBEDDING_NAME, {0: "batch"}, target)


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
