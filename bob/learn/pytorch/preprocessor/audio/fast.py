"""Optimised forward passes for networks in evaluation mode.

The embedding networks are fully convolutional in time up to the statistics
pooling, so one traced graph serves every input length and batch size. On the
CPU, :func:`build_frame_runner` traces ``network.forward_frames`` (everything
before the pooling), freezes it and applies
:func:`torch.jit.optimize_for_inference` (BatchNorm folded into the
convolutions, oneDNN kernels with pre-packed weights). The pooling and the
embedding layer stay eager: they cost nothing and keep the original's float32
arithmetic. Measured on the 2-core development machine (see
``doc/performance.rst``), this is 1.3–1.6× faster than the eager network and
within about 1e-6 of it; ``torch.compile`` recompiles for every new input
length, and oneDNN Graph fusion returned wrong results for a second length.

:class:`FastForward` keeps one such runner per network and rebuilds it when the
network's weights, mode or device change; networks in train mode, networks
without ``forward_frames`` and devices other than the CPU use the eager
network unchanged.
"""
import itertools
import logging
import threading
import warnings
import weakref
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ...architectures.utils import SpeakerEmbeddingNet, l2_normalize, statistics_pooling

__all__ = [
    "FrameFeatures",
    "build_frame_runner",
    "embedding_head",
    "supports_fast_path",
    "FastForward",
    "PROBE_SHAPE",
    "RUNNER_ATOL",
    "RUNNER_FRAMES_RTOL",
]

logger = logging.getLogger(__name__)

#: Input shape used to trace the network; the traced graph accepts any batch and length.
TRACE_SHAPE = (1, 1, 300, 257)
#: A different shape on which the optimised runner is checked against the eager network.
PROBE_SHAPE = (2, 1, 173, 257)
#: Largest difference from the eager network's embeddings accepted for an optimised runner.
RUNNER_ATOL = 1e-5
#: Largest difference from the eager frame features, relative to their largest magnitude
#: (float32 rounding through 30 layers reaches about 1e-5; the pooling averages it out).
RUNNER_FRAMES_RTOL = 1e-4

Runner = Callable[[torch.Tensor], torch.Tensor]


class FrameFeatures(nn.Module):
    """Expose ``network.forward_frames`` as a module's ``forward`` (for tracing)."""

    def __init__(self, network: SpeakerEmbeddingNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_frames(x)


def embedding_head(network: SpeakerEmbeddingNet, frames: torch.Tensor) -> torch.Tensor:
    """Pool frame features ``(N, 512, T5, 1)`` and embed them as ``forward_emb`` does."""
    return l2_normalize(network.em(statistics_pooling(frames)))


def supports_fast_path(network: object) -> bool:
    """True for an eval-mode embedding network in ``emb`` mode (the only case optimised)."""
    return (
        isinstance(network, SpeakerEmbeddingNet)
        and not network.training
        and getattr(network, "net_type", None) == "emb"
    )


def _network_device(network: nn.Module) -> torch.device:
    for parameter in network.parameters():
        return parameter.device
    return torch.device("cpu")


def build_frame_runner(network: SpeakerEmbeddingNet) -> Runner:
    """The fastest exact form of ``network.forward_frames`` for an eval-mode network.

    On the CPU: a traced, frozen and inference-optimised TorchScript graph,
    checked against the eager network on :data:`PROBE_SHAPE` (another batch
    size and length than the trace); if tracing fails or the check differs by
    more than :data:`RUNNER_FRAMES_RTOL` (frame features) or
    :data:`RUNNER_ATOL` (embeddings), the eager method is returned and a
    warning logged. Other devices get the eager method.

    Parameters
    ----------
    network : SpeakerEmbeddingNet
        Network in evaluation mode.

    Returns
    -------
    callable
        Maps float32 ``(N, 1, T, F)`` to ``(N, 512, T5, 1)``; call it under
        :func:`torch.inference_mode`.
    """
    if network.training:
        raise ValueError("build_frame_runner needs a network in eval mode (call network.eval() first)")
    device = _network_device(network)
    if device.type != "cpu":
        return network.forward_frames
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # TorchScript is deprecated (since torch 2.5) but still the fastest form that takes
            # any input length without recompiling; if it goes, the eager network is used.
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(FrameFeatures(network).eval(), torch.zeros(TRACE_SHAPE), check_trace=False)
            runner = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        frames_error, embedding_error = _probe_errors(network, runner)
    except (AttributeError, RuntimeError, ValueError, TypeError) as exc:  # pragma: no cover - torch-dependent
        logger.warning("TorchScript optimisation failed (%s); using the eager network", exc)
        return network.forward_frames
    if not (frames_error <= RUNNER_FRAMES_RTOL and embedding_error <= RUNNER_ATOL):
        logger.warning(
            "optimised network differs from the eager one (frames %.3g relative, embeddings %.3g); "
            "using the eager network",
            frames_error,
            embedding_error,
        )
        return network.forward_frames
    logger.debug("optimised frame runner ready (probe differences %.2g, %.2g)", frames_error, embedding_error)
    return runner


def _probe_errors(network: SpeakerEmbeddingNet, runner: Runner) -> Tuple[float, float]:
    """The frame features' relative and the embeddings' absolute difference on a probe input."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(PROBE_SHAPE, generator=generator)
    with torch.inference_mode():
        fast, eager = runner(probe), network.forward_frames(probe)
        scale = float(eager.abs().max()) or 1.0
        frames_error = float((fast - eager).abs().max()) / scale
        embedding_error = float((embedding_head(network, fast) - embedding_head(network, eager)).abs().max())
    return frames_error, embedding_error


def _fingerprint(network: nn.Module, modules: Tuple[nn.Module, ...]) -> Optional[Tuple]:
    """Identify the network's structure, weights and mode; None if it cannot be optimised.

    ``modules`` is ``tuple(network.modules())`` as cached; a replaced submodule
    changes its parent's children and so the fingerprint. Walking the cached
    modules' own dictionaries costs about a tenth of ``network.parameters()``.
    """
    state = [getattr(network, "net_type", None)]
    try:
        for module in modules:
            if module.training:
                return None
            state.extend(id(child) for child in module._modules.values())
            for tensor in itertools.chain(module._parameters.values(), module._buffers.values()):
                if tensor is not None:
                    state.append((tensor.data_ptr(), tensor._version))
    except RuntimeError:  # inference tensors have no version counter
        return None
    return tuple(state)


class FastForward:
    """Per-network cache of the optimised frame runner.

    ``frames(network)`` and ``embed(network)`` return callables mapping a
    float32 ``(N, 1, T, F)`` batch to frame features or embeddings, using the
    optimised runner when :func:`supports_fast_path` holds and the eager
    network otherwise. The runner is rebuilt when the weights, structure or
    mode change (tracked through the modules' children and the tensors'
    storage and version counters), so it never serves stale weights; a network
    with any submodule in train mode runs eagerly. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._network: Optional[weakref.ref] = None
        self._modules: Tuple[nn.Module, ...] = ()
        self._key: Optional[Tuple] = None
        self._runner: Optional[Runner] = None

    def frames(self, network: nn.Module) -> Runner:
        """Callable computing ``network.forward_frames`` (optimised when possible)."""
        if not supports_fast_path(network):
            return network.forward_frames
        with self._lock:
            cached = self._network() if self._network is not None else None
            modules = self._modules if cached is network else tuple(network.modules())
            key = _fingerprint(network, modules)
            if key is None:
                return network.forward_frames
            if self._runner is None or cached is not network or self._key != key:
                modules = tuple(network.modules())
                key = _fingerprint(network, modules)
                if key is None:
                    return network.forward_frames
                self._runner = build_frame_runner(network)
                self._network, self._modules, self._key = weakref.ref(network), modules, key
            return self._runner

    def embed(self, network: nn.Module) -> Runner:
        """Callable computing ``network(x)`` (optimised when possible, else ``network`` itself)."""
        if not supports_fast_path(network):
            return network
        runner = self.frames(network)
        if runner == network.forward_frames:
            return network
        return lambda x: embedding_head(network, runner(x))

    def clear(self) -> None:
        """Forget the cached runner (it is rebuilt on next use)."""
        with self._lock:
            self._network = self._key = self._runner = None
            self._modules = ()
