"""Where a network's frame body runs: eager PyTorch (the reference), ONNX Runtime or MNN.

A *runtime* computes ``network.forward_frames`` (everything before the
statistics pooling) for a float32 ``(N, 1, T, F)`` batch. The pooling and
the embedding layer cost little: behind an optimised runtime they run in
NumPy (:func:`embedding_head`), so that no PyTorch thread pool is used after
the frame body. Three runtimes exist:

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
forked after the session was made can use it, whatever torch's thread count
(eager PyTorch and MNN cannot: :func:`check_forked_child` raises there).
"""
import importlib.util
import logging
import os
from typing import TYPE_CHECKING, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy
import torch
from torch import nn

from . import export_cache
from .architectures.utils import SpeakerEmbeddingNet
from .errors import RuntimeBuildError
from .mnn_runtime import MnnRuntime, mnn_available
from .onnx_export import INPUT_NAME, OUTPUT_NAME, export_frame_body

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "RUNTIMES", "OPTIONAL_RUNTIMES", "AUTO_RUNTIME", "RUNNER_ATOL", "RUNNER_FRAMES_RTOL", "Runtime", "EagerRuntime",
    "OnnxRuntime", "onnxruntime_available", "check_runtime_name", "missing_runtime", "available_runtimes",
    "build_runtime", "embedding_head", "embed_pooled", "FORK_SAFE_RUNTIMES", "check_forked_child",
    "AUTO_BY_HOST", "host_kind", "auto_runtime", "onnxruntime_session_options",
]

logger = logging.getLogger(__name__)

#: Names a runtime can be asked for.
RUNTIMES = ("auto", "onnxruntime", "mnn", "eager")
#: Largest difference from the eager network's embeddings accepted for another runtime.
RUNNER_ATOL = 1e-5
#: Largest difference from the eager frame features, relative to their largest magnitude
#: (float32 rounding through 30 layers reaches about 1e-5; the pooling averages it out).
RUNNER_FRAMES_RTOL = 1e-4
#: Runtimes that keep working in a child process forked after they were built (see :func:`check_forked_child`).
FORK_SAFE_RUNTIMES = ("onnxruntime",)
#: Batch size and frames of the probe input: other than the export's, to exercise the free axes.
PROBE_BATCH, PROBE_FRAMES = 2, 173
#: Frames of the one-utterance probe of a frame body read from the runtime cache (which passed the full probe
#: when it was written): it checks that this machine's runtime runs that very file as the eager network does.
LOAD_PROBE_FRAMES = 64

Runtime = Callable[[torch.Tensor], torch.Tensor]


def embedding_head(network: SpeakerEmbeddingNet, frames: torch.Tensor) -> torch.Tensor:
    """Pool frame features ``(N, C, T', 1)`` and embed them as ``forward_emb`` does, in NumPy float64.

    The pooled ``[mean, unbiased std]`` vector, the embedding layer ``em`` and
    the L2 normalisation are those of ``forward_emb``, computed in float64
    (closer to the exact values than PyTorch's float32, within 1e-7 of it)
    and rounded to float32. No PyTorch operator runs, so no PyTorch thread
    pool is used: the head works in a process forked after PyTorch's threads
    were started, as the ONNX Runtime session does.

    Returns
    -------
    torch.Tensor
        float32 ``(N, D)`` unit-norm embeddings on the CPU.
    """
    features = numpy.asarray(frames.detach().cpu().numpy()[..., 0], dtype=numpy.float64)
    pooled = numpy.concatenate([features.mean(axis=2), features.std(axis=2, ddof=1)], axis=1)
    return torch.from_numpy(embed_pooled(network, pooled))


def embed_pooled(network: SpeakerEmbeddingNet, pooled: numpy.ndarray) -> numpy.ndarray:
    """The embedding layer ``em`` and the L2 normalisation of ``forward_emb`` on pooled vectors ``(N, 2C)``.

    Computed in float64 NumPy from the layer's current weights, rounded to
    float32 ``(N, D)``; see :func:`embedding_head`. The product is NumPy's
    ``einsum``, which runs in the calling thread: BLAS's threads, woken for
    a product this small, took up to 100 times as long on a loaded machine.
    """
    layer = network.em
    weight = layer.weight.detach().cpu().numpy().astype(numpy.float64)
    bias = layer.bias.detach().cpu().numpy().astype(numpy.float64)
    raw = numpy.einsum("nk,dk->nd", numpy.asarray(pooled, dtype=numpy.float64), weight) + bias
    return (raw / numpy.linalg.norm(raw, axis=1, keepdims=True)).astype(numpy.float32)


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

        options = onnxruntime_session_options(threads)
        self.threads = options.intra_op_num_threads
        self._session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        (frames,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(frames)

    def __repr__(self) -> str:
        return f"OnnxRuntime(threads={self.threads})"


def onnxruntime_session_options(threads: int) -> "onnxruntime.SessionOptions":
    """The options of the package's ONNX Runtime sessions: ``threads`` sleeping intra-operator threads, every graph optimisation.

    ``ORT_ENABLE_ALL`` includes the layout optimisations (the blocked
    ``NCHWc`` convolutions, with AVX-512 kernels where the processor has
    them) and the fusion of ReLUs and residual additions into the
    convolutions. The other options are ONNX Runtime's defaults, which were
    as fast as any alternative on both kinds of host (see the performance
    page, *AVX-512 hosts*).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the session's warnings are not the user's business
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


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
#: The optimised runtime ``"auto"`` builds on each kind of host, and why: measured side by side with the others
#: (``benchmarks/runtimes.py`` and ``benchmarks/stages.py``; hosts and figures on the performance page).
#: MNN, faster on AVX2 hosts, is used only when named: it prints and hangs in forked children.
AUTO_BY_HOST: Dict[str, Tuple[str, str]] = {
    "avx512": ("onnxruntime", "AVX-512 host: ONNX Runtime's blocked AVX-512 convolutions took 0.42 to 0.82 of eager "
                              "PyTorch's (oneDNN's) time for the frame body"),
    "avx2": ("onnxruntime", "AVX2 host: ONNX Runtime took 0.75 of eager PyTorch's time for the frame body; MNN, "
                            "faster there on long recordings, is opt-in (backend 'mnn')"),
}


def host_kind() -> str:
    """``"avx512"`` when the processor has AVX-512 (the ``avx512f`` flag, else PyTorch's kernel set), else ``"avx2"``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return "avx512" if "avx512f" in line.split(":", 1)[1].split() else "avx2"
    except OSError:
        pass
    return "avx512" if torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512") else "avx2"


def auto_runtime() -> Tuple[str, str]:
    """The runtime ``"auto"`` builds on this host, and why (read by ``bob pytorch info``).

    Decided once per host from :data:`AUTO_BY_HOST`, not per call; eager
    PyTorch when that runtime is not installed.
    """
    name, reason = AUTO_BY_HOST[host_kind()]
    missing = missing_runtime(name)
    return ("eager", missing) if missing else (name, reason)


#: The optimised runtime ``"auto"`` builds on this host when it is installed (see :func:`auto_runtime`).
AUTO_RUNTIME = AUTO_BY_HOST[host_kind()][0]


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

    The probe is random normal, ``shape`` giving its batch size and frames. The embeddings compared are the
    runtime's through :func:`embedding_head` (as the extractor computes them) and the eager network's ``forward_emb``.
    """
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((shape[0], 1, shape[1], bins), generator=generator)
    with torch.inference_mode():
        fast, eager = runtime(probe), network.forward_frames(probe)
        scale = float(eager.abs().max()) or 1.0
        frames_error = float((fast - eager).abs().max()) / scale
        embedding_error = float((embedding_head(network, fast) - network.forward_emb(probe)).abs().max())
    return frames_error, embedding_error


def check_forked_child(runtime: str, loaded_in: int) -> None:
    """Raise instead of waiting forever when ``runtime`` cannot run in this process, a child forked after loading.

    ``loaded_in`` is the id of the process that loaded the network (and so
    started PyTorch's threads). In a child made from it by ``fork``, the
    threads of eager PyTorch and of MNN, when they run more than one (they
    run torch's count), are gone, and a call would wait for them forever;
    ONNX Runtime's session and the NumPy work around it
    (:func:`embedding_head`) keep working.

    Parameters
    ----------
    runtime : str
        The runtime that would run: ``"onnxruntime"``, ``"mnn"`` or ``"eager"``.
    loaded_in : int
        :func:`os.getpid` of the process that loaded the network.

    Raises
    ------
    RuntimeError
        If this is another process and ``runtime`` would hang in it; the
        message names the ways out.
    """
    if os.getpid() == loaded_in or runtime in FORK_SAFE_RUNTIMES or torch.get_num_threads() == 1:
        return  # one thread (the runtime's count is torch's): no thread pool to wait for
    if runtime == "mnn":
        why, other = "MNN's worker threads do not survive fork", "use backend 'onnxruntime' (the fast extra)"
    else:
        why = "PyTorch's OpenMP threads do not survive fork"
        other = "use backend 'onnxruntime' (the fast extra), or call torch.set_num_threads(1) in the child"
    raise RuntimeError(
        f"this process was forked from process {loaded_in} after that one loaded the network, and the {runtime} "
        f"runtime would wait forever here ({why}): start worker processes with multiprocessing's 'spawn' or "
        f"'forkserver' method (as dask does) or load the extractor in each worker, or {other}"
    )


def runtime_name(runtime: Optional[Runtime]) -> str:
    """``"onnxruntime"``, ``"mnn"`` or ``"eager"``: the name of a runtime from :func:`build_runtime`."""
    return getattr(runtime, "name", "eager")
