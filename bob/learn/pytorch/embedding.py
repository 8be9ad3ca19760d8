"""From a spectrogram to embeddings: chunking, per-chunk standardisation, batched forward.

This reproduces ``extract_embeddings`` of the original extractor, with one
deliberate change: chunks too short for the network (fewer than its
``min_frames``, 37 for the released networks), for which the original
returned NaN rows, are dropped, and a spectrogram too short for any chunk
raises ``ValueError``.
"""
import numbers
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch

__all__ = [
    "FREQUENCY_STRIDE",
    "accepted_bins",
    "CHUNK_EPSILON",
    "plan_chunks",
    "plan_batches",
    "standardize",
    "standardized_batch",
    "embed_chunks",
    "check_specs",
    "embed_spectrogram",
    "whole_number",
    "as_list",
]

#: Frequency bins per column of the networks' last convolution (four halvings of the frequency axis).
FREQUENCY_STRIDE = 16
#: Added to the per-column standard deviation when standardising a chunk.
CHUNK_EPSILON = 1e-7

Chunk = Tuple[int, int]


def whole_number(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an int, or ``ValueError`` naming ``name`` if it is not an integer of at least ``minimum`` (0 or 1).

    >>> whole_number("batch_size", numpy.int64(8), minimum=1)
    8
    """
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} integer, got {value!r} ({type(value).__name__})")
    return int(value)


def as_list(name: str, values: Any, what: str) -> list:
    """``values`` read into a list, or ``TypeError`` naming ``name`` and ``what`` it should hold if it is not iterable.

    >>> as_list("rates", (16000, 8000), "sampling rates")
    [16000, 8000]
    """
    try:
        return list(values)
    except TypeError:
        raise TypeError(f"{name} must be a list (or other iterable) of {what}, got {type(values).__name__}") from None


def plan_chunks(n_frames: int, L: int, min_length: int = 30) -> List[Chunk]:
    """The ``[start, stop)`` frame ranges the original cuts a spectrogram into.

    ``L == 0`` (or ``L > n_frames``) means one chunk. Otherwise there are
    ``n_frames // L`` chunks of ``L`` frames, plus one shorter trailing chunk
    when more than ``min_length`` frames remain; a remainder of ``min_length``
    frames or fewer is dropped.

    >>> plan_chunks(512, 250)
    [(0, 250), (250, 500)]
    >>> plan_chunks(300, 100)
    [(0, 100), (100, 200), (200, 300)]
    >>> plan_chunks(340, 100)
    [(0, 100), (100, 200), (200, 300), (300, 340)]
    """
    if n_frames <= 0:
        raise ValueError("the spectrogram has no frames")
    if L == 0 or L > n_frames:
        L = n_frames
    count = n_frames // L + (1 if n_frames % L > min_length else 0)
    return [(i * L, min((i + 1) * L, n_frames)) for i in range(count)]


def plan_batches(n_chunks: int, batch_size: int) -> List[List[int]]:
    """Group chunk indices into forward batches exactly as the original did.

    A batch is closed when it holds ``batch_size`` chunks, at the
    second-to-last chunk and at the last one, so the trailing (possibly
    shorter) chunk always runs alone. The grouping changes eval-mode results
    only by rounding, but matters for a network in train mode.

    >>> plan_batches(5, 2)
    [[0, 1], [2, 3], [4]]
    >>> plan_batches(4, 3)
    [[0, 1, 2], [3]]
    """
    batches, current = [], []
    for i in range(n_chunks):
        current.append(i)
        if len(current) == batch_size or i >= n_chunks - 2:
            batches.append(current)
            current = []
    return batches


def standardize(chunk: numpy.ndarray, out: Optional[numpy.ndarray] = None) -> numpy.ndarray:
    """Standardise each frequency column: ``(x - mean) / (population std + 1e-7)``.

    Runs in the chunk's own dtype, as the original, with the operations of
    ``chunk.mean(axis=0)`` and ``chunk.std(axis=0)``, so the result is
    bit-identical to the obvious NumPy expression, in fewer passes over the
    data.

    Parameters
    ----------
    chunk : numpy.ndarray
        ``(T, F)`` float array.
    out : numpy.ndarray, optional
        ``(T, F)`` array to write the result into, rounded to its dtype (as
        ``.astype`` would round it); by default a new array of the chunk's dtype.

    Returns
    -------
    numpy.ndarray
        ``out``, or the new array.
    """
    centred = chunk - chunk.mean(axis=0)
    std = numpy.sqrt(numpy.multiply(centred, centred).sum(axis=0) / len(chunk))
    if out is None:
        out = centred
    return numpy.divide(centred, std + CHUNK_EPSILON, out=out, casting="same_kind")


def standardized_batch(chunks: Sequence[numpy.ndarray]) -> numpy.ndarray:
    """The network input ``(B, 1, T, F)`` float32 of equally long chunks, each standardised on its own."""
    batch = numpy.empty((len(chunks), 1) + chunks[0].shape, dtype=numpy.float32)
    for row, chunk in zip(batch, chunks):
        standardize(chunk, out=row[0])
    return batch


def accepted_bins(bins: int) -> Tuple[int, int]:
    """Fewest and most frequency bins a spectrogram may have for a network whose front end gives ``bins``.

    From ``bins`` up to the next multiple of :data:`FREQUENCY_STRIDE`: the
    widths that leave the network's last convolution as many columns.

    >>> accepted_bins(257)
    (257, 272)
    """
    return bins, FREQUENCY_STRIDE * -(-bins // FREQUENCY_STRIDE)


def check_specs(specs: Any, bins: int) -> numpy.ndarray:
    """Return ``specs`` as a 2-D float array ``(T, F)`` or raise ``ValueError``.

    ``bins`` is the number of frequency bins of the network's front end
    (``record.front_end.bins``); :func:`accepted_bins` gives the range
    accepted. float32 input stays float32 (the original's own test
    standardised in float32); everything else becomes float64.
    """
    array = numpy.asarray(specs)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"specs must be a numeric (T, F) array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"specs must be a 2-D (frames, frequency bins) array, got shape {array.shape}")
    low, high = accepted_bins(bins)
    if not low <= array.shape[1] <= high:
        raise ValueError(
            f"specs has {array.shape[1]} frequency bins; the networks need {bins} "
            f"(the spectrogram of their front end), or at most {high}"
        )
    if array.shape[0] == 0:
        raise ValueError("specs has no frames")
    if not numpy.all(numpy.isfinite(array)):
        raise ValueError("specs contains NaN or infinite values")
    if array.dtype != numpy.float32:
        array = array.astype(numpy.float64)
    return array


def iter_batches(
    specs: numpy.ndarray, L: int, batch_size: int, min_length: int, min_frames: int
) -> Iterator[List[numpy.ndarray]]:
    """Yield the chunks of ``specs`` of at least ``min_frames`` frames, grouped into batches as the original did."""
    chunks = plan_chunks(len(specs), L, min_length)
    usable = [stop - start >= min_frames for start, stop in chunks]
    if not any(usable):
        raise ValueError(
            f"no chunk of the {len(specs)}-frame spectrogram has the {min_frames} frames the network needs "
            f"(L={L}); use longer audio (at least {min_frames} frames) or L=0 or L >= {min_frames}"
        )
    for batch in plan_batches(len(chunks), batch_size):
        members = [i for i in batch if usable[i]]
        if members:
            yield [specs[slice(*chunks[i])] for i in members]


def embed_chunks(
    forward: Callable[[torch.Tensor], torch.Tensor], chunks: Sequence[numpy.ndarray], device: Any = "cpu"
) -> numpy.ndarray:
    """Embeddings ``(len(chunks), D)`` of equally long chunks, each standardised on its own, in one pass.

    Parameters
    ----------
    forward : callable
        Maps a float32 tensor ``(B, 1, L, F)`` to ``(B, D)`` embeddings.
    chunks : sequence of numpy.ndarray
        ``(L, F)`` spectrogram chunks of one length.
    device : str or torch.device
        Where the input tensor is sent.

    Returns
    -------
    numpy.ndarray
        float32 ``(len(chunks), D)``.
    """
    inputs = torch.from_numpy(standardized_batch(chunks))
    with torch.inference_mode():
        return forward(inputs.to(device, non_blocking=True)).float().cpu().numpy()


def embed_spectrogram(
    forward: Callable[[torch.Tensor], torch.Tensor],
    specs: Any,
    L: int = 0,
    batch_size: int = 1,
    min_length: int = 30,
    device: Any = "cpu",
    *,
    min_frames: int,
    bins: int,
) -> numpy.ndarray:
    """Embed a spectrogram chunk by chunk.

    Parameters
    ----------
    forward : callable
        Maps a float32 tensor ``(B, 1, L, F)`` to ``(B, D)`` embeddings
        (a network in ``"emb"`` mode).
    specs : array_like
        ``(T, F)`` spectrogram.
    L : int
        Chunk length in frames; 0 for one chunk over the whole spectrogram.
    batch_size : int
        Chunks per forward pass.
    min_length : int
        A trailing remainder of at most this many frames is dropped.
    device : str or torch.device
        Where the input tensors are sent.
    min_frames : int
        Chunks shorter than this are dropped (the network's ``min_frames``).
    bins : int
        Frequency bins of the network's front end (``record.front_end.bins``).

    Returns
    -------
    numpy.ndarray
        float32 ``(n_chunks, D)``, one row per usable chunk.
    """
    specs = check_specs(specs, bins)
    L = whole_number("L", L)
    min_length = whole_number("min_length", min_length)
    batch_size = whole_number("batch_size", batch_size, minimum=1)
    batches = iter_batches(specs, L, batch_size, min_length, min_frames)
    return numpy.vstack([embed_chunks(forward, chunks, device) for chunks in batches])
