"""Where a network's frame body runs: eager PyTorch (the reference), ONNX Runtime or MNN.

A *runtime* computes ``network.forward_frames`` (everything before the
statistics pooling) for a float32 ``(N, 1, T, F)`` batch. The pooling and
the embedding layer always stay eager: they cost little and keep the
original's float32 arithmetic. Three runtimes exist:

* ``"eager"``: the network itself, the reference every other form is held to;
* ``"onnxruntime"``: the frame body exported to ONNX
  (:func:`~bob.learn.pytorch.onnx_export.export_frame_body`, the time and
  batch axes free) and run by an ONNX Runtime session, which fuses ReLUs and
  residual additions into its convolutions. Needs the ``fast`` extra
  (``onnx``, ``onnxscript`` and ``onnxruntime``).
* ``"mnn"``: the same export converted for MNN, whose Winograd convolutions
  are faster on long recordings; opt-in only, for the reasons given in
  :mod:`bob.learn.pytorch.mnn_runtime`. Needs the ``mnn`` extra.

``"auto"`` means ONNX Runtime when it is installed and passes its check, else
eager. :func:`build_runtime` builds one and checks it against the eager
network once, on an input of another batch size and length than the export
(a frame body read from the runtime cache, :mod:`bob.learn.pytorch.export_cache`,
passed that check when it was written and is checked again on a short input);
the extractor calls it when its network is loaded and again only when asked
to (:meth:`~bob.learn.pytorch.preprocessor.audio.EmbeddingExtractor.rebuild_runtime`),
since the runtime holds a copy of the weights and of torch's thread count of
that moment. No runtime changes anything outside itself: ONNX Runtime's
worker threads belong to its session, sleep between calls, and a process
forked after the session was made can use it.
"""
import importlib.util
import logging
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from . import export_cache
from .architectures.utils import SpeakerEmbeddingNet, l2_normalize, statistics_pooling
from .errors import RuntimeBuildError
from .mnn_runtime import MnnRuntime, mnn_available
from .onnx_export import INPUT_NAME, OUTPUT_NAME, export_frame_body

__all__ = [
    "RUNTIMES", "OPTIONAL_RUNTIMES", "AUTO_RUNTIME", "RUNNER_ATOL", "RUNNER_FRAMES_RTOL", "Runtime", "EagerRuntime",
    "OnnxRuntime", "onnxruntime_available", "check_runtime_name", "missing_runtime", "available_runtimes",
    "build_runtime",
]

logger = logging.getLogger(__name__)

#: Names a runtime can be asked for.
RUNTIMES = ("auto", "onnxruntime", "mnn", "eager")
#: Largest difference from the eager network's embeddings accepted for another runtime.
RUNNER_ATOL = 1e-5
#: Largest difference from the eager frame features, relative to their largest magnitude
#: (float32 rounding through 30 layers reaches about 1e-5; the pooling averages it out).
RUNNER_FRAMES_RTOL = 1e-4
#: Batch size and frames of the probe input: other than the export's, to exercise the free axes.
PROBE_BATCH, PROBE_FRAMES = 2, 173
#: Frames of the one-utterance probe of a frame body read from the runtime cache (which passed the full probe
#: when it was written): it checks that this machine's runtime runs that very file as the eager network does.
LOAD_PROBE_FRAMES = 64

Runtime = Callable[[torch.Tensor], torch.Tensor]


def embedding_head(network: SpeakerEmbeddingNet, frames: torch.Tensor) -> torch.Tensor:
    """Pool frame features ``(N, C, T', 1)`` and embed them as ``forward_emb`` does."""
    return l2_normalize(network.em(statistics_pooling(frames)))


class EagerRuntime:
    """The network's own ``forward_frames``: the reference."""

    name = "eager"

    def __init__(self, network: SpeakerEmbeddingNet) -> None:
        self.network = network

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_frames(x)

    def __repr__(self) -> str:
        return "EagerRuntime()"


class OnnxRuntime:
    """The exported frame body in an ONNX Runtime session on the CPU.

    Parameters
    ----------
    model : bytes
        ONNX model from :func:`~bob.learn.pytorch.onnx_export.export_frame_body`.
    threads : int
        Intra-operator threads of the session.

    Notes
    -----
    The session's threads sleep between calls instead of spinning: spinning
    made single calls no faster and slowed the PyTorch work beside it in the
    same process by up to 60 %. Calls from several threads share the session
    safely.
    """

    name = "onnxruntime"

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
        array = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        (frames,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(frames)

    def __repr__(self) -> str:
        return f"OnnxRuntime(threads={self.threads})"


def onnxruntime_available() -> bool:
    """True when ``onnx`` and ``onnxscript`` (to export) and ``onnxruntime`` are installed (the ``fast`` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript", "onnxruntime"))


class _OptionalRuntime(NamedTuple):
    """An optimised runtime: what it is called, what it needs and how it is made from the exported frame body."""

    title: str
    available: Callable[[], bool]
    extras: str
    make: Callable[[bytes, int], Runtime]


#: The optimised runtimes by name. The entries look their functions up when called, so that what
#: they call can be replaced (in tests, for example).
OPTIONAL_RUNTIMES: Dict[str, _OptionalRuntime] = {
    "onnxruntime": _OptionalRuntime(
        "ONNX Runtime", lambda: onnxruntime_available(), "fast", lambda model, threads: OnnxRuntime(model, threads)
    ),
    "mnn": _OptionalRuntime(
        "MNN",
        lambda: onnxruntime_available() and mnn_available(),
        "mnn",
        lambda model, threads: MnnRuntime(model, threads),
    ),
}
#: The optimised runtime ``"auto"`` builds when it is installed (MNN is used only when named).
AUTO_RUNTIME = "onnxruntime"


def check_runtime_name(name: str) -> str:
    """Return ``name`` if it is one of :data:`RUNTIMES` and can be built here.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`RUNTIMES`.
    ImportError
        If ``name`` is an optimised runtime whose extra is not installed.
    """
    if name not in RUNTIMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, RUNTIMES))}, got {name!r}")
    missing = missing_runtime(name)
    if missing:
        raise ImportError(missing)
    return name


def missing_runtime(name: str) -> Optional[str]:
    """What to install for the optimised runtime ``name``, or None if it is installed (or needs nothing)."""
    optional = OPTIONAL_RUNTIMES.get(name)
    if optional is None or optional.available():
        return None
    return f'{optional.title} is not installed: pip install "bob.learn.pytorch[{optional.extras}]"'


def available_runtimes() -> List[str]:
    """The runtimes that can be built here, ``"eager"`` last (``"auto"`` not included)."""
    return [name for name in OPTIONAL_RUNTIMES if missing_runtime(name) is None] + ["eager"]


def _device_of(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


def build_runtime(network: SpeakerEmbeddingNet, name: str = "auto", bins: int = 257) -> Runtime:
    """The runtime ``name`` for an eval-mode network, checked against the eager network.

    ``"auto"`` builds ONNX Runtime when it is installed and falls back to
    eager, with a warning, if the build or the check fails; an optimised
    runtime asked for by name (``"onnxruntime"``, ``"mnn"``) raises instead.
    Networks off the CPU run eagerly.

    Parameters
    ----------
    network : SpeakerEmbeddingNet
        Network in evaluation mode.
    name : {"auto", "onnxruntime", "mnn", "eager"}
        Which runtime.
    bins : int
        Frequency bins of the network's input (its front end's).

    Returns
    -------
    callable
        Maps float32 ``(N, 1, T, bins)`` to the frame features; its ``name``
        says which runtime it is. Call it under :func:`torch.inference_mode`.

    Raises
    ------
    ValueError, ImportError
        From :func:`check_runtime_name`; ValueError for a network in train mode.
    RuntimeBuildError
        If an optimised runtime was asked for by name and cannot run the network or differs from it.
    SettingsError
        If the runtime cache's setting is wrong (:func:`~bob.learn.pytorch.export_cache.cache_location`).
    """
    check_runtime_name(name)
    if network.training:
        raise ValueError("build_runtime needs a network in eval mode (call network.eval() first)")
    eager = EagerRuntime(network)
    chosen = AUTO_RUNTIME if name == "auto" else name
    optional = OPTIONAL_RUNTIMES.get(chosen)
    if optional is None or _device_of(network).type != "cpu" or not optional.available():
        return eager
    cache = export_cache.cache_location()  # a bad cache setting is the user's to fix, not a reason to run eager
    threads = torch.get_num_threads()

    def check(model: bytes, fresh: bool) -> export_cache.Checked:
        runtime = optional.make(model, threads)
        shape = (PROBE_BATCH, PROBE_FRAMES) if fresh else (1, LOAD_PROBE_FRAMES)
        frames_error, embedding_error = probe_errors(network, runtime, bins, shape)
        passed = frames_error <= RUNNER_FRAMES_RTOL and embedding_error <= RUNNER_ATOL
        return export_cache.Checked(runtime, passed, {"frames": frames_error, "embedding": embedding_error})

    try:
        checked = export_cache.checked_model(network, bins, cache, lambda: export_frame_body(network, bins), check)
    except Exception as exc:  # noqa: BLE001 - any failure of the optional runtime means: use the eager network
        problem = f"{optional.title} could not run the network ({type(exc).__name__}: {_one_line(exc)})"
        if name != "auto":
            raise RuntimeBuildError(f"{problem}; use backend 'auto' or 'eager'") from exc
        logger.warning("%s; using eager PyTorch", problem)
        return eager
    frames_error, embedding_error = checked.details["frames"], checked.details["embedding"]
    if checked.passed:
        logger.debug("%s ready (probe differences %.2g, %.2g)", chosen, frames_error, embedding_error)
        return checked.value
    message = (
        f"{optional.title}'s network differs from the eager one (frame features {frames_error:.3g} relative, "
        f"embeddings {embedding_error:.3g})"
    )
    if name != "auto":
        raise RuntimeBuildError(f"{message}; use backend 'auto' or 'eager'")
    logger.warning("%s; using eager PyTorch", message)
    return eager


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def probe_errors(
    network: SpeakerEmbeddingNet, runtime: Runtime, bins: int = 257, shape: Tuple[int, int] = (PROBE_BATCH, PROBE_FRAMES)
) -> Tuple[float, float]:
    """The frame features' relative and the embeddings' absolute difference from eager on a probe input.

    The probe is random normal, ``shape`` giving its batch size and frames.
    """
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((shape[0], 1, shape[1], bins), generator=generator)
    with torch.inference_mode():
        fast, eager = runtime(probe), network.forward_frames(probe)
        scale = float(eager.abs().max()) or 1.0
        frames_error = float((fast - eager).abs().max()) / scale
        embedding_error = float((embedding_head(network, fast) - embedding_head(network, eager)).abs().max())
    return frames_error, embedding_error


def runtime_name(runtime: Optional[Runtime]) -> str:
    """``"onnxruntime"``, ``"mnn"`` or ``"eager"``: the name of a runtime from :func:`build_runtime`."""
    return getattr(runtime, "name", "eager")
