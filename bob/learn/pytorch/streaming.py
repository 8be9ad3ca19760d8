"""One embedding of a long recording in bounded memory.

The whole-utterance embedding (``L=0``) standardises the spectrogram with its
per-column mean and population standard deviation, runs the network, and pools
the frame features with their mean and unbiased standard deviation over time.
Everything before the pooling is local in time, so the same numbers can be
computed block by block:

1. a first pass computes the spectrogram in blocks and merges their column
   statistics (float64, Chan et al.'s pairwise update), so the spectrogram is
   never held whole;
2. a second pass recomputes each block of spectrogram with enough context on
   both sides (the network's ``halo_steps`` output steps, more than its
   receptive field), standardises it with the global statistics, runs
   ``forward_frames`` and keeps only the output steps whose receptive field lies
   inside the block; blocks start on multiples of the network's time stride
   so that they sample the same grid as the whole input, and the last block
   ends with the recording, so the edges see the same zero padding;
3. the kept frame features are merged into running float64 mean and variance,
   which give the pooled ``[mean, std]`` vector for the embedding layer.

Memory is then bounded by the block size, not the recording's length. The
time geometry (stride, receptive field, output length) comes from the
network's registry record (:class:`~bob.learn.pytorch.pretrained.PretrainedNetwork`).
"""
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy
import torch

from .embedding import CHUNK_EPSILON, check_specs
from .frontend import BOB_AP_FRONT_END, FrontEnd, checked_samples
from .pretrained import PretrainedNetwork
from .runtimes import embed_pooled

__all__ = [
    "BLOCK_STEPS",
    "STREAMING_MIN_FRAMES",
    "plan_blocks",
    "RunningMoments",
    "SpectrogramArray",
    "SignalSpectrogram",
    "signal_source",
    "column_statistics",
    "pooled_statistics",
    "embed_long",
]

#: Output steps kept per block (192 steps = 6144 frames, about 61 s). Smaller blocks cost
#: more halo; larger ones more memory (with ONNX Runtime, for a 60-minute recording: 256
#: steps peaked 70 to 80 MiB higher and were no faster; 128 steps 150 MiB lower but 7 to 14 % slower).
BLOCK_STEPS = 192
#: Whole-utterance embeddings of at least this many frames (about 2.7 min) are
#: computed block by block.
STREAMING_MIN_FRAMES = 16384
#: Frames of spectrogram per block in the statistics pass.
STATISTICS_BLOCK_FRAMES = 8192


@dataclass(frozen=True)
class Block:
    """Input frames ``[start, stop)`` to run, and output steps ``[keep_start, keep_stop)`` to keep.

    ``first_step`` is the global index of the block's first output step.
    """

    start: int
    stop: int
    keep_start: int
    keep_stop: int
    first_step: int


def plan_blocks(
    n_frames: int, network: PretrainedNetwork, block_steps: int = BLOCK_STEPS, halo_steps: Optional[int] = None
) -> List[Block]:
    """Cut ``n_frames`` input frames into overlapping blocks covering every output step once.

    Parameters
    ----------
    n_frames : int
        Frames of the whole input.
    network : PretrainedNetwork
        Its ``time_stride``, ``halo_steps`` and ``output_steps`` give the geometry.
    block_steps : int
        Output steps kept per block.
    halo_steps : int, optional
        Output steps of context on each side (the network's by default).

    >>> from bob.learn.pytorch import pretrained
    >>> blocks = plan_blocks(3000, pretrained.get("dltresnet34"), 40)
    >>> [(b.start, b.stop, b.keep_start, b.keep_stop) for b in blocks]
    [(0, 1920, 0, 40), (640, 3000, 40, 80), (1920, 3000, 80, 94)]
    """
    halo_steps = network.halo_steps if halo_steps is None else halo_steps
    if block_steps < 1 or halo_steps < 0:
        raise ValueError(f"block_steps must be positive and halo_steps non-negative, got {block_steps}, {halo_steps}")
    stride = network.time_stride
    total = network.output_steps(n_frames)
    blocks = []
    for keep_start in range(0, total, block_steps):
        keep_stop = min(keep_start + block_steps, total)
        start = max(0, keep_start - halo_steps) * stride
        stop = n_frames if keep_stop == total else min(n_frames, (keep_stop + halo_steps) * stride)
        blocks.append(Block(start, stop, keep_start, keep_stop, start // stride))
    return blocks


class RunningMoments:
    """Column-wise mean and sum of squared deviations, merged block by block in float64."""

    def __init__(self, width: int) -> None:
        self.count = 0
        self.mean = numpy.zeros(width, dtype=numpy.float64)
        self.m2 = numpy.zeros(width, dtype=numpy.float64)

    def update(self, rows: numpy.ndarray) -> None:
        """Add the rows of a ``(n, width)`` block."""
        rows = numpy.asarray(rows, dtype=numpy.float64)
        n = rows.shape[0]
        if n == 0:
            return
        block_mean = rows.mean(axis=0)
        block_m2 = numpy.square(rows - block_mean).sum(axis=0)
        total = self.count + n
        delta = block_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + block_m2 + numpy.square(delta) * (self.count * n / total)
        self.count = total

    def std(self, ddof: int = 0) -> numpy.ndarray:
        """Standard deviation with ``ddof`` degrees of freedom removed (NaN if too few rows)."""
        if self.count - ddof <= 0:
            return numpy.full_like(self.mean, numpy.nan)
        return numpy.sqrt(self.m2 / (self.count - ddof))


class SpectrogramArray:
    """Frame source over a spectrogram already in memory, of ``bins`` frequency bins (the network's front end's)."""

    def __init__(self, specs: Any, bins: int) -> None:
        self.specs = check_specs(specs, bins)
        self.n_frames = self.specs.shape[0]
        self.width = self.specs.shape[1]

    def frames(self, start: int, stop: int) -> numpy.ndarray:
        """Rows ``[start, stop)`` of the spectrogram."""
        return self.specs[start:stop]


class SignalSpectrogram:
    """Frame source computing the extractors' spectrogram of a signal on demand.

    Parameters
    ----------
    samples : numpy.ndarray
        1-D signal at the front end's rate, of any numeric dtype; it is not copied.
    scale : float
        Factor applied to the samples after conversion to float64 (the
        original's ``2**15`` rule for signals with a peak below 1).
    front_end : FrontEnd
        Spectrogram settings (those of the network).
    """

    def __init__(self, samples: numpy.ndarray, scale: float = 1.0, front_end: FrontEnd = BOB_AP_FRONT_END) -> None:
        self.samples = samples
        self.scale = float(scale)
        self.front_end = front_end
        self.win_length, self.win_shift = front_end.win_length, front_end.win_shift
        self.width = front_end.bins
        self.n_samples = len(samples)
        self.n_frames = front_end.n_frames(self.n_samples)

    def signal(self, start: int, stop: int) -> numpy.ndarray:
        """Samples ``[start, stop)`` as float64, scaled."""
        block = self.samples[start:stop].astype(numpy.float64)
        if self.scale != 1.0:
            block *= self.scale
        return block

    def frames(self, start: int, stop: int) -> numpy.ndarray:
        """Spectrogram rows ``[start, stop)``, equal to those of the whole signal's spectrogram.

        The frame before ``start`` is computed too and dropped: its last
        mean-removed sample is carried into the pre-emphasis of frame ``start``.
        """
        if not 0 <= start < stop <= self.n_frames:
            raise ValueError(f"frames [{start}, {stop}) outside the {self.n_frames} frames of the signal")
        first = max(start - 1, 0)
        segment = self.signal(first * self.win_shift, (stop - 1) * self.win_shift + self.win_length)
        return self.front_end.spectrogram(segment)[start - first :]


def signal_source(audio: Any, front_end: FrontEnd = BOB_AP_FRONT_END, block_samples: int = 1 << 20) -> SignalSpectrogram:
    """Check ``(rate, samples)`` and wrap it as a frame source, without copying input at the front end's rate.

    The checks, the ``2**15`` rule and the resampling are
    :func:`~bob.learn.pytorch.frontend.checked_samples`, done block by block.
    Other rates are resampled whole (FFT resampling needs the whole signal),
    which takes memory proportional to the length.

    Parameters
    ----------
    audio : tuple
        ``(rate, samples)``, mono, integer or float samples.
    front_end : FrontEnd
        Sampling rate and spectrogram settings (those of the network).
    block_samples : int
        Samples checked at a time.

    Returns
    -------
    SignalSpectrogram
        The frame source; its ``n_samples`` and ``n_frames`` give the length.
    """
    samples, scale = checked_samples(audio, front_end.sample_rate, block_samples)
    return SignalSpectrogram(samples, scale, front_end)


def column_statistics(source: Any, block_frames: int = STATISTICS_BLOCK_FRAMES) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Per-column mean and population standard deviation of a frame source, in float64.

    Parameters
    ----------
    source : SpectrogramArray or SignalSpectrogram
        Frames to summarise, read ``block_frames`` at a time.
    block_frames : int
        Frames per block.

    Returns
    -------
    tuple of numpy.ndarray
        ``(mean, std)``, each of shape ``(F,)``, as ``specs.mean(0)`` and ``specs.std(0)``.
    """
    moments = RunningMoments(source.width)
    for start in range(0, source.n_frames, block_frames):
        moments.update(source.frames(start, min(start + block_frames, source.n_frames)))
    return moments.mean, moments.std(ddof=0)


def pooled_statistics(
    runtime: Callable[[torch.Tensor], torch.Tensor],
    source: Any,
    mean: numpy.ndarray,
    std: numpy.ndarray,
    network: PretrainedNetwork,
    device: Any = "cpu",
    block_steps: Optional[int] = None,
    halo_steps: Optional[int] = None,
) -> RunningMoments:
    """Run ``runtime`` block by block over the standardised source; merge the frame features.

    Parameters
    ----------
    runtime : callable
        ``forward_frames`` of the network, in any runtime.
    source : SpectrogramArray or SignalSpectrogram
        The frames to embed.
    mean, std : numpy.ndarray
        Column statistics of the whole source (:func:`column_statistics`).
    network : PretrainedNetwork
        The network's record, for its time geometry (:func:`plan_blocks`).
    device : str or torch.device
        Where the network runs.
    block_steps : int, optional
        Output steps kept per block (:data:`BLOCK_STEPS` by default).
    halo_steps : int, optional
        Output steps computed on each side for context (the network's by default).

    Returns
    -------
    RunningMoments
        Count, mean and sum of squared deviations of the ``(T', C)`` frame features.
    """
    moments: Optional[RunningMoments] = None
    denominator = std + CHUNK_EPSILON
    block_steps = BLOCK_STEPS if block_steps is None else block_steps
    for block in plan_blocks(source.n_frames, network, block_steps, halo_steps):
        standardized = ((source.frames(block.start, block.stop) - mean) / denominator).astype(numpy.float32)
        tensor = torch.from_numpy(standardized)[None, None].to(device)
        features = runtime(tensor)[0, :, :, 0]
        first = block.keep_start - block.first_step
        kept = features[:, first : first + block.keep_stop - block.keep_start]
        if kept.shape[1] != block.keep_stop - block.keep_start:
            raise RuntimeError(f"block {block} returned {features.shape[1]} steps, fewer than planned")
        rows = kept.cpu().numpy().T.astype(numpy.float64)  # NumPy: no PyTorch operator after the frame body
        if moments is None:
            moments = RunningMoments(rows.shape[1])
        moments.update(rows)
    return moments


def embed_long(
    module: torch.nn.Module,
    runtime: Callable[[torch.Tensor], torch.Tensor],
    source: Any,
    network: PretrainedNetwork,
    device: Any = "cpu",
    block_steps: Optional[int] = None,
    halo_steps: Optional[int] = None,
) -> numpy.ndarray:
    """The whole-utterance embedding of ``source``, computed block by block.

    Parameters
    ----------
    module : SpeakerEmbeddingNet
        Eval-mode network (its ``em`` layer is used).
    runtime : callable
        ``module.forward_frames`` in any runtime.
    source : SpectrogramArray or SignalSpectrogram
        The frames to embed (at least the network's ``min_frames``).
    network : PretrainedNetwork
        The network's record, for its time geometry.
    device : str or torch.device
        Where the network runs.
    block_steps, halo_steps : int, optional
        Output steps kept per block (:data:`BLOCK_STEPS` by default), and
        computed on each side for context (the network's by default).

    Returns
    -------
    numpy.ndarray
        float32 ``(1, D)`` embedding, equal to the whole-utterance computation
        within float32 rounding.
    """
    if network.output_steps(source.n_frames) < 2:
        raise ValueError(
            f"{source.n_frames} frames are too few for an embedding (at least {network.min_frames} are needed)"
        )
    mean, std = column_statistics(source)
    with torch.inference_mode():
        moments = pooled_statistics(runtime, source, mean, std, network, device, block_steps, halo_steps)
    pooled = numpy.concatenate([moments.mean, moments.std(ddof=1)])
    return embed_pooled(module, pooled[None])
