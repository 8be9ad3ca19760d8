"""Optimised forward passes for networks in evaluation mode.

The embedding networks are fully convolutional in time up to the statistics
pooling, so one exported graph serves every input length and batch size. On
the CPU, :func:`build_frame_runner` turns ``network.forward_frames``
(everything before the pooling) into one of these forms, each checked against
the eager network when it is built:

* ``"mnn"``: the frame body exported to ONNX and run by MNN with Winograd
  F(2x2, 3x3) convolutions (:mod:`.mnn_backend`; needs the ``fast`` extra),
  which do 2.25 times fewer multiplications in the 3x3 convolutions.
* ``"onnxruntime"``: the same export run by ONNX Runtime
  (:mod:`.ort_backend`; ``fast`` extra). BatchNorm, ReLU and the
  residual additions are fused into its direct convolutions.
* ``"torchscript"``: the frame body traced, frozen and passed through
  :func:`torch.jit.optimize_for_inference` (BatchNorm folded, oneDNN kernels
  with pre-packed weights).
* ``"eager"``: the network itself.

``"auto"`` takes the first of these that is installed and passes its check,
in an order fixed by the processor (:func:`auto_backends`), so that every
process on a machine computes the same numbers: MNN first, then ONNX
Runtime, on processors without AVX-512 (on the 2-core AVX2 development
machine MNN is 1.2 to 1.45 times faster); ONNX Runtime first where torch
reports AVX-512, because the MNN wheels have no AVX-512 kernels and ONNX
Runtime has. TorchScript comes next, so without the ``fast`` extra
``"auto"`` uses TorchScript.

The pooling and the embedding layer stay eager: they cost little and keep the
original's float32 arithmetic. Measured on the 2-core development machines
(``doc/performance.rst``), the forward pass of a 3 s utterance takes 10.5 ms
with ONNX Runtime, 13.3 ms with TorchScript and 16.8 ms eagerly on AVX-512;
on AVX2, a 10 s utterance takes 69 ms with MNN, 98 ms with ONNX Runtime
and 129 ms eagerly;
``torch.compile`` recompiles for every new input length or fails on
channels-last inputs, and oneDNN Graph fusion returned wrong results for a
second length.

:class:`FastForward` keeps one such runner per network and rebuilds it when the
network's weights, mode or device, or torch's thread count, change; networks in
train mode, networks without ``forward_frames`` and devices other than the CPU
use the eager network unchanged.
"""
import logging
import threading
import warnings
import weakref
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from ...architectures.utils import SpeakerEmbeddingNet, l2_normalize, statistics_pooling
from . import mnn_backend, ort_backend

__all__ = [
    "BACKENDS",
    "AUTO_BACKENDS",
    "AUTO_BACKENDS_AVX512",
    "auto_backends",
    "FrameFeatures",
    "build_frame_runner",
    "backend_available",
    "check_backend",
    "runner_backend",
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

#: Forms a frame runner can take; ``"auto"`` takes the first that works of :func:`auto_backends`.
BACKENDS = ("auto", "mnn", "onnxruntime", "torchscript", "eager")
#: Order in which ``"auto"`` tries the optimised forms on a processor without AVX-512.
AUTO_BACKENDS = ("mnn", "onnxruntime", "torchscript")
#: Order on a processor with AVX-512: the MNN wheels have no AVX-512 kernels, ONNX Runtime has.
AUTO_BACKENDS_AVX512 = ("onnxruntime", "mnn", "torchscript")
#: Forms that need optional packages (the ``fast`` extra): their modules and what is missing without them.
_OPTIONAL_BACKENDS = {"mnn": (mnn_backend, "MNN"), "onnxruntime": (ort_backend, "ONNX Runtime")}

Runner = Callable[[torch.Tensor], torch.Tensor]


class FrameFeatures(nn.Module):
    """Expose ``network.forward_frames`` as a module's ``forward`` (for tracing and export)."""

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


def build_frame_runner(network: SpeakerEmbeddingNet, backend: str = "auto") -> Runner:
    """The fastest exact form of ``network.forward_frames`` for an eval-mode network.

    On the CPU, ``backend="auto"`` tries the forms of :func:`auto_backends`
    in order and keeps the first that is installed and passes its check
    (MNN, :mod:`.mnn_backend`, and ONNX Runtime, :mod:`.ort_backend`, share
    one ONNX export; TorchScript is a traced, frozen and inference-optimised
    graph); the form kept is logged at INFO level. Another ``backend`` builds
    only the form named. Each form is checked against the eager network on
    :data:`PROBE_SHAPE` (another batch size and length than the export); one
    that fails to build or differs by more than :data:`RUNNER_FRAMES_RTOL`
    (frame features) or :data:`RUNNER_ATOL` (embeddings) is skipped with a
    warning. When none is left, or on other devices, or with
    ``backend="eager"``, the eager method is returned.

    Parameters
    ----------
    network : SpeakerEmbeddingNet
        Network in evaluation mode.
    backend : {"auto", "mnn", "onnxruntime", "torchscript", "eager"}
        Which form to build.

    Returns
    -------
    callable
        Maps float32 ``(N, 1, T, F)`` to ``(N, 512, T5, 1)``; call it under
        :func:`torch.inference_mode`. :func:`runner_backend` names its form.

    Raises
    ------
    ValueError, ImportError
        From :func:`check_backend`; ValueError also for a network in train mode.
    """
    check_backend(backend)
    if network.training:
        raise ValueError("build_frame_runner needs a network in eval mode (call network.eval() first)")
    if _network_device(network).type != "cpu" or backend == "eager":
        return network.forward_frames
    body = _FrameBody(network)
    if backend == "auto":
        runner = _first_checked_runner(network, auto_backends(), body)
    else:
        runner = _checked_runner(network, backend, body)
    return network.forward_frames if runner is None else runner


def auto_backends(capability: Optional[str] = None) -> Tuple[str, ...]:
    """Order in which ``backend="auto"`` tries the optimised forms on this processor.

    Parameters
    ----------
    capability : str, optional
        The processor's vector instructions as
        :func:`torch.backends.cpu.get_cpu_capability` names them (``"AVX2"``,
        ``"AVX512"``, ...); by default, what it reports here (the environment
        variable ``ATEN_CPU_CAPABILITY`` can lower it).

    Returns
    -------
    tuple of str
        :data:`AUTO_BACKENDS_AVX512` for an AVX-512 processor, else
        :data:`AUTO_BACKENDS`. The order depends on nothing else (not on
        timings or load), so all processes on a machine pick the same form.
    """
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    return AUTO_BACKENDS_AVX512 if capability.upper().startswith("AVX512") else AUTO_BACKENDS


class _FrameBody:
    """A network's frame body and, exported on first use only, its ONNX form (shared by MNN and ONNX Runtime)."""

    def __init__(self, network: SpeakerEmbeddingNet) -> None:
        self.module = FrameFeatures(network).eval()
        self._onnx: Optional[bytes] = None

    def onnx(self) -> bytes:
        if self._onnx is None:
            self._onnx = ort_backend.export_frame_body(self.module)
        return self._onnx


def _first_checked_runner(
    network: SpeakerEmbeddingNet, backends: Tuple[str, ...], body: _FrameBody
) -> Optional[Runner]:
    """The runner of the first of ``backends`` that is installed and passes its check; None if none does."""
    for name in backends:
        if not backend_available(name):
            logger.debug('%s is not installed (pip install "bob.learn.pytorch[fast]"); skipped', name)
            continue
        runner = _checked_runner(network, name, body)
        if runner is not None:
            logger.info("auto backend: %s (order here: %s)", name, ", ".join(backends))
            return runner
    return None


def _checked_runner(network: SpeakerEmbeddingNet, backend: str, body: _FrameBody) -> Optional[Runner]:
    """Build one backend's runner and probe it; None (with a warning) if either fails."""
    try:
        runner = _BUILDERS[backend](body)
        frames_error, embedding_error = _probe_errors(network, runner)
    except Exception as exc:  # noqa: BLE001 - any failure of an optional optimiser means: use another form
        logger.warning("%s optimisation failed (%s: %s); not used", backend, type(exc).__name__, exc)
        return None
    if not (frames_error <= RUNNER_FRAMES_RTOL and embedding_error <= RUNNER_ATOL):
        logger.warning(
            "%s network differs from the eager one (frames %.3g relative, embeddings %.3g); not used",
            backend,
            frames_error,
            embedding_error,
        )
        return None
    logger.debug("%s frame runner ready (probe differences %.2g, %.2g)", backend, frames_error, embedding_error)
    return runner


def _build_torchscript(body: FrameFeatures) -> Runner:
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated (since torch 2.5) but still takes any input length
        # without recompiling; if it goes, the next form is used.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(body, torch.zeros(TRACE_SHAPE), check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


_BUILDERS: Dict[str, Callable[[_FrameBody], Runner]] = {
    "mnn": lambda body: mnn_backend.build_mnn_runner(body.module, body.onnx()),
    "onnxruntime": lambda body: ort_backend.build_onnxruntime_runner(body.module, body.onnx()),
    "torchscript": lambda body: _build_torchscript(body.module),
}


def backend_available(backend: str) -> bool:
    """True if the packages ``backend`` needs are installed (always, for those without optional packages)."""
    optional = _OPTIONAL_BACKENDS.get(backend)
    return optional is None or optional[0].available()


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is one of :data:`BACKENDS` and can be built here.

    Raises
    ------
    ValueError
        If ``backend`` is not one of :data:`BACKENDS`.
    ImportError
        If ``backend`` is ``"mnn"`` or ``"onnxruntime"`` and its packages are not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if not backend_available(backend):
        title = _OPTIONAL_BACKENDS[backend][1]
        raise ImportError(f'{title} is not installed: pip install "bob.learn.pytorch[fast]"')
    return backend


def runner_backend(runner: Runner) -> str:
    """Name of the form of a runner from :func:`build_frame_runner`."""
    if isinstance(runner, torch.jit.ScriptModule):
        return "torchscript"
    return getattr(runner, "backend", "eager")


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
    if any(module.training for module in modules):
        return None
    tensors = [
        tensor
        for module in modules
        for group in (module._parameters, module._buffers)
        for tensor in group.values()
        if tensor is not None
    ]
    try:
        versions = [tensor._version for tensor in tensors]
    except RuntimeError:  # inference tensors have no version counter
        return None
    children = [tuple(map(id, module._modules.values())) for module in modules]
    return getattr(network, "net_type", None), children, [tensor.data_ptr() for tensor in tensors], versions


class FastForward:
    """Per-network cache of the optimised frame runner.

    ``frames(network)`` and ``embed(network)`` return callables mapping a
    float32 ``(N, 1, T, F)`` batch to frame features or embeddings, using the
    optimised runner when :func:`supports_fast_path` holds and the eager
    network otherwise. The runner is rebuilt when the weights, structure or
    mode change (tracked through the modules' children and the tensors'
    storage and version counters), or when :func:`torch.set_num_threads`
    changed the thread count, so it never serves stale weights; a network
    with any submodule in train mode runs eagerly. Thread-safe.

    Parameters
    ----------
    backend : {"auto", "mnn", "onnxruntime", "torchscript", "eager"}
        Form of the runner (see :func:`build_frame_runner`).
    """

    def __init__(self, backend: str = "auto") -> None:
        self.backend = check_backend(backend)
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
            key = self._key_of(network, modules)
            if key is None:
                return network.forward_frames
            if self._runner is None or cached is not network or self._key != key:
                modules = tuple(network.modules())
                key = self._key_of(network, modules)
                if key is None:
                    return network.forward_frames
                self._runner = build_frame_runner(network, self.backend)
                self._network, self._modules, self._key = weakref.ref(network), modules, key
            return self._runner

    @staticmethod
    def _key_of(network: nn.Module, modules: Tuple[nn.Module, ...]) -> Optional[Tuple]:
        fingerprint = _fingerprint(network, modules)
        return None if fingerprint is None else (torch.get_num_threads(), fingerprint)

    def embed(self, network: nn.Module) -> Runner:
        """Callable computing ``network(x)`` (optimised when possible, else ``network`` itself)."""
        if not supports_fast_path(network):
            return network
        runner = self.frames(network)
        if runner == network.forward_frames:
            return network
        return lambda x: embedding_head(network, runner(x))

    def runner_backend(self, network: nn.Module) -> str:
        """Form of the runner ``frames(network)`` uses: ``"mnn"``, ``"onnxruntime"``, ``"torchscript"``, ``"eager"``."""
        return runner_backend(self.frames(network))

    def clear(self) -> None:
        """Forget the cached runner (it is rebuilt on next use)."""
        with self._lock:
            self._network = self._key = self._runner = None
            self._modules = ()
