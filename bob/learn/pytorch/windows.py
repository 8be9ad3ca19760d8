"""What gets embedded: speech only, sliding windows, given segments, each with its times.

Everything here takes an :class:`~bob.learn.pytorch.pipeline.EmbeddingPipeline`
and a ``(rate, samples)`` recording:

- :func:`embed_speech` embeds only the frames a voice activity detector
  (:mod:`bob.learn.pytorch.vad`) labels as speech: the spectrogram of the whole
  recording is computed, its non-speech frames are dropped, and the kept frames
  are embedded as one utterance (standardised together, pooled together), in
  bounded memory for long recordings;
- :func:`embed_windows` embeds windows of ``window`` seconds every ``step``
  seconds, and :func:`embed_segments` given ``[start, end)`` segments.

**Exactness contract of windows and segments.** Row ``i`` equals the
pipeline's embedding of exactly the samples ``[round(start * rate), round(end
* rate))`` of the recording (its *crop*, embedded alone as
``pipeline.embed((rate, samples[a:b]))``) within 1e-5. Crops are batched
(equal lengths together, up to :data:`~bob.learn.pytorch.pipeline.MAX_BATCH_FRAMES`
frames per pass). When the recording is at the network's rate and a crop starts
on the spectrogram's hop grid, its spectrogram is taken from the recording's
(computed once for overlapping crops): every frame but the first is the same
computation, and the first is recomputed on its own (the crop's pre-emphasis
has no previous sample). Other crops (other rates, which resample each crop as
the pipeline would, crops off the grid, float crops whose ``2**15`` rule
differs from the recording's, crops long enough to stream, or a network that
does not run as built) go through ``pipeline.embed_many`` on the crops.

:func:`pool_by_label` averages the rows of each label: the mean of the unit
vectors, divided by its norm.
"""
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy

from .embedding import embed_chunks
from .frontend import mono_samples, unpack_audio
from .pipeline import MAX_BATCH_FRAMES, EmbeddingPipeline
from .streaming import SignalSpectrogram, signal_source
from .vad import FRAME_SHIFT, VoiceActivity, check_activity, get_vad

__all__ = [
    "SpeechFrames",
    "speech_activity",
    "embed_speech",
    "speech_labels",
    "embed_with_labels",
    "window_times",
    "embed_windows",
    "check_segments",
    "embed_segments",
    "pool_by_label",
]


# -- speech only ------------------------------------------------------------------------------


class SpeechFrames:
    """Frame source over the speech frames of another source: frame ``i`` is ``source`` frame ``kept[i]``.

    Frames are read run by run of consecutive kept frames, so memory stays
    bounded by the blocks asked for, whatever the gaps.
    """

    def __init__(self, source: Any, kept: numpy.ndarray) -> None:
        self.source = source
        self.kept = numpy.asarray(kept, dtype=numpy.int64)
        self.n_frames = len(self.kept)
        self.width = source.width

    def frames(self, start: int, stop: int) -> numpy.ndarray:
        """Speech frames ``[start, stop)``."""
        if not 0 <= start < stop <= self.n_frames:
            raise ValueError(f"frames [{start}, {stop}) outside the {self.n_frames} speech frames")
        indices = self.kept[start:stop]
        breaks = numpy.flatnonzero(numpy.diff(indices) != 1) + 1
        runs = numpy.split(indices, breaks)
        return numpy.concatenate([self.source.frames(int(run[0]), int(run[-1]) + 1) for run in runs])


def speech_activity(vad: Any, audio: Any) -> VoiceActivity:
    """``vad(audio)``, checked (:func:`~bob.learn.pytorch.vad.check_activity`); ``vad`` may be a name."""
    detector = get_vad(vad)
    return check_activity(detector(audio), source=f"the VAD {detector!r}")


def kept_frames(labels: numpy.ndarray, n_frames: int) -> numpy.ndarray:
    """Indices of the spectrogram's ``n_frames`` frames labelled speech (missing labels count as non-speech)."""
    labels = numpy.asarray(labels, dtype=bool)[:n_frames]
    return numpy.flatnonzero(labels)


def embed_speech(
    pipeline: EmbeddingPipeline, audio: Any, vad: Any = "energy", labels: Optional[Any] = None
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """The embedding of the speech frames of ``audio``, and the labels that chose them.

    Parameters
    ----------
    pipeline : EmbeddingPipeline
        The network.
    audio : tuple
        ``(rate, samples)``.
    vad : str or callable
        The detector (:func:`~bob.learn.pytorch.vad.get_vad`), unless ``labels`` are given.
    labels : array_like, optional
        0/1 speech labels, one per 10 ms frame (frame ``k`` of the spectrogram
        is kept if ``labels[k]`` is 1; frames beyond the labels are dropped).

    Returns
    -------
    tuple
        float32 ``(1, D)`` unit-norm embedding, and the bool labels of the
        spectrogram's frames (True: kept).

    Raises
    ------
    ValueError
        If fewer frames than the network's ``min_frames`` are speech (the
        message names the speech found), or as ``pipeline.embed``.
    """
    from .vad import as_labels

    source = signal_source(audio, pipeline.network.front_end)
    pipeline.require_minimum_length(source.n_samples)
    if labels is None:
        found, what = speech_activity(vad, audio).labels, f"the VAD {get_vad(vad)!r}"
    else:
        found, what = as_labels(labels, "speech labels"), "the speech labels"
    kept = kept_frames(found, source.n_frames)
    used = numpy.zeros(source.n_frames, dtype=bool)
    used[kept] = True
    min_frames = pipeline.network.min_frames
    if len(kept) < min_frames:
        seconds = source.n_samples / pipeline.network.front_end.sample_rate
        raise ValueError(
            f"too little speech: {what} found {len(kept)} speech frames ({len(kept) * FRAME_SHIFT:.2f} s of speech "
            f"in {seconds:.2f} s of audio); the network needs at least {min_frames} frames "
            f"({min_frames * FRAME_SHIFT:.2f} s) of speech. Use vad=None to embed the whole recording"
        )
    return pipeline.embed_source(SpeechFrames(source, kept)), used


def speech_labels(annotations: Any) -> Optional[numpy.ndarray]:
    """The 0/1 speech labels held in a sample's annotations, or None when they hold none (None or a dict).

    bob.bio.spear's VAD annotators (``Energy_2Gauss``, ``Mod_4Hz``) store one
    0/1 label per 10 ms frame as the sample's annotations.
    """
    from .vad import as_labels

    if annotations is None or isinstance(annotations, dict):
        return None
    return as_labels(annotations, "annotations")


def embed_with_labels(extractor: Any, audios: Sequence[Any], annotations: Sequence[Any], batch_size: int = 8):
    """Embeddings ``(N, D)`` of recordings, each restricted to the speech frames its annotations label.

    Recordings whose annotations hold no labels (:func:`speech_labels`) are
    embedded as ``extractor.embed_many`` embeds them, together; the others one
    by one with :meth:`EmbeddingExtractor.embed_speech`. Errors name the recording's index.
    """
    annotations = list(annotations)
    if len(annotations) != len(audios):
        raise ValueError(f"got {len(audios)} recordings but {len(annotations)} annotations")
    labels = [speech_labels(each) for each in annotations]
    result = numpy.zeros((len(audios), extractor.bn_dim), dtype=numpy.float32)
    whole = [i for i, found in enumerate(labels) if found is None]
    if whole:
        result[whole] = extractor.embed_many([audios[i] for i in whole], batch_size=batch_size)
    for index, found in enumerate(labels):
        if found is not None:
            try:
                result[index] = extractor.embed_speech(audios[index], labels=found)[0][0]
            except ValueError as exc:
                raise ValueError(f"audios[{index}]: {exc}") from exc
    return result


# -- windows and segments ---------------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    """Row ``index``: samples ``[start, stop)`` of the recording."""

    index: int
    start: int
    stop: int


def _positive_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, numpy.integer, numpy.floating)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def window_times(duration: float, window: float, step: float) -> numpy.ndarray:
    """``(N, 2)`` start and end seconds of the windows that fit in ``duration``: starts ``0, step, 2 step, ...``.

    >>> window_times(3.0, 2.0, 0.5)
    array([[0. , 2. ],
           [0.5, 2.5],
           [1. , 3. ]])
    """
    window, step = _positive_seconds("window", window), _positive_seconds("step", step)
    count = max(0, math.floor((duration - window) / step + 1e-9) + 1)
    starts = numpy.arange(count, dtype=numpy.float64) * step
    return numpy.stack([starts, starts + window], axis=1).reshape(-1, 2)


def _crops(times: numpy.ndarray, rate: int, n_samples: int) -> List[Crop]:
    crops = []
    for index, (start, end) in enumerate(times):
        first, stop = round(start * rate), min(round(end * rate), n_samples)
        crops.append(Crop(index, first, stop))
    return crops


def embed_windows(
    pipeline: EmbeddingPipeline, audio: Any, window: float, step: float
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Embeddings of windows of ``window`` seconds every ``step`` seconds, and their times.

    Only whole windows are embedded: the last one ends at or before the end
    of the recording (a tail shorter than a window is left out).

    Returns
    -------
    tuple of numpy.ndarray
        float32 ``(N, D)`` embeddings and float64 ``(N, 2)`` start and end
        seconds; row ``i`` equals ``pipeline.embed`` of its crop within 1e-5
        (see the module's contract).

    Raises
    ------
    ValueError
        If ``window`` or ``step`` is not a positive number, the window is
        shorter than the network's shortest input, or the recording shorter
        than one window.
    """
    rate, samples = unpack_audio(audio)
    n_samples = len(mono_samples(samples))
    times = window_times(n_samples / rate, window, step)
    _check_window_length(pipeline, window)
    if len(times) == 0:
        raise ValueError(
            f"the recording ({n_samples / rate:.3f} s) is shorter than one window of {float(window):g} s; "
            "use a shorter --window, or embed the recording whole"
        )
    return embed_crops(pipeline, audio, _crops(times, rate, n_samples)), times


def _check_window_length(pipeline: EmbeddingPipeline, window: float) -> None:
    front_end, min_frames = pipeline.network.front_end, pipeline.network.min_frames
    shortest = front_end.samples_for(min_frames) / front_end.sample_rate
    if window < shortest:
        raise ValueError(
            f"window of {window:g} s is shorter than the network's shortest input, {min_frames} frames "
            f"({shortest:.3f} s); use a window of at least {shortest:.3f} s"
        )


def check_segments(segments: Any, duration: float) -> Tuple[numpy.ndarray, Optional[List[str]]]:
    """``(N, 2)`` start and end seconds of ``(start, end[, label])`` rows, and their labels (None if none has one).

    Raises
    ------
    ValueError
        If there is no row, a row has not 2 or 3 fields, a time is not a
        finite number, ``end <= start``, ``start < 0`` or ``end`` is beyond the
        recording's ``duration`` (the message names the row).
    """
    rows = list(segments)
    if not rows:
        raise ValueError("no segment given: pass (start, end[, label]) rows in seconds")
    times = numpy.empty((len(rows), 2), dtype=numpy.float64)
    labels = []
    for index, row in enumerate(rows):
        row = tuple(row)
        if len(row) not in (2, 3):
            raise ValueError(f"segment {index}: expected (start, end[, label]), got {len(row)} fields: {row!r}")
        try:
            start, end = float(row[0]), float(row[1])
        except (TypeError, ValueError):
            raise ValueError(f"segment {index}: start and end must be numbers of seconds, got {row[:2]!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise ValueError(f"segment {index}: [{start:g}, {end:g}) s is not a segment (need 0 <= start < end)")
        if end > duration + 1e-9:
            raise ValueError(
                f"segment {index}: ends at {end:g} s, after the end of the recording ({duration:.3f} s)"
            )
        times[index] = start, end
        labels.append(None if len(row) == 2 else str(row[2]))
    if all(label is None for label in labels):
        return times, None
    if any(label is None for label in labels):
        raise ValueError("segments: give a label to every row, or to none")
    return times, labels


def embed_segments(pipeline: EmbeddingPipeline, audio: Any, segments: Any) -> numpy.ndarray:
    """Embeddings ``(N, D)`` of the crops of ``(start, end[, label])`` segments in seconds (labels are ignored here).

    Row ``i`` equals ``pipeline.embed`` of samples ``[round(start * rate),
    round(end * rate))`` within 1e-5. Errors name the segment.
    """
    rate, samples = unpack_audio(audio)
    n_samples = len(mono_samples(samples))
    times, _ = check_segments(segments, n_samples / rate)
    crops = _crops(times, rate, n_samples)
    needed = pipeline.network.front_end
    for crop in crops:
        shortest = needed.samples_for(pipeline.network.min_frames)
        length = needed.resampled_length(crop.stop - crop.start, rate)
        if length < shortest:
            start, end = times[crop.index]
            raise ValueError(
                f"segment {crop.index}: [{start:g}, {end:g}) s is shorter than the network's shortest input "
                f"({shortest / needed.sample_rate:.3f} s)"
            )
    return embed_crops(pipeline, audio, crops)


def embed_crops(pipeline: EmbeddingPipeline, audio: Any, crops: Sequence[Crop]) -> numpy.ndarray:
    """Rows ``(len(crops), D)``: each the embedding of its crop, sharing the recording's spectrogram where exact."""
    rate, samples = unpack_audio(audio)
    samples = mono_samples(samples)
    result = numpy.zeros((len(crops), pipeline.network.embedding_dim), dtype=numpy.float32)
    shared, alone = _split_shared(pipeline, audio, crops)
    if alone:
        rows = pipeline.embed_many([(rate, samples[c.start : c.stop]) for c in alone])
        result[[c.index for c in alone]] = rows
    if shared:
        source = signal_source(audio, pipeline.network.front_end)
        forward = pipeline.forward()
        for batch in _batches(shared, source):
            chunks = [_crop_frames(source, crop, frames) for crop, frames in batch]
            for length in sorted({len(chunk) for chunk in chunks}):
                members = [i for i, chunk in enumerate(chunks) if len(chunk) == length]
                rows = embed_chunks(forward, [chunks[i] for i in members], pipeline.device)
                result[[batch[i][0].index for i in members]] = rows
    return result


def _split_shared(pipeline: EmbeddingPipeline, audio: Any, crops: Sequence[Crop]) -> Tuple[List[Crop], List[Crop]]:
    """The crops whose spectrogram can be taken from the recording's, and the others."""
    rate, samples = unpack_audio(audio)
    front_end = pipeline.network.front_end
    if rate != front_end.sample_rate or not pipeline.runs_as_built():
        return [], list(crops)
    samples = mono_samples(samples)
    source = signal_source(audio, front_end)
    shared, alone = [], []
    for crop in crops:
        n_frames = front_end.n_frames(crop.stop - crop.start)
        on_grid = crop.start % front_end.win_shift == 0 and n_frames < pipeline.streaming_min_frames
        if on_grid and _scale_of(samples[crop.start : crop.stop]) == source.scale:
            shared.append(crop)
        else:
            alone.append(crop)
    return shared, alone


def _scale_of(samples: numpy.ndarray) -> float:
    """The ``2**15`` rule's factor for these samples alone (as the pipeline decides it for a crop)."""
    from .frontend import INT16_SCALE

    if samples.dtype.kind != "f":
        return INT16_SCALE if not numpy.any(samples) else 1.0
    return INT16_SCALE if float(numpy.max(numpy.abs(samples))) < 1 else 1.0


def _batches(crops: Sequence[Crop], source: SignalSpectrogram) -> Iterator[List[Tuple[Crop, numpy.ndarray]]]:
    """Crops in start order with the recording's frames they span, about :data:`MAX_BATCH_FRAMES` frames at a time.

    Overlapping crops in one batch share one spectrogram computation.
    """
    shift = source.win_shift
    ordered = sorted(crops, key=lambda crop: (crop.start, crop.stop))
    batch: List[Crop] = []
    total = 0
    for crop in ordered + [None]:
        frames = 0 if crop is None else source.front_end.n_frames(crop.stop - crop.start)
        if batch and (crop is None or total + frames > MAX_BATCH_FRAMES):
            first = batch[0].start // shift
            last = max(c.start // shift + source.front_end.n_frames(c.stop - c.start) for c in batch)
            block = source.frames(first, last)
            yield [(c, block[c.start // shift - first :]) for c in batch]
            batch, total = [], 0
        if crop is not None:
            batch.append(crop)
            total += frames


def _crop_frames(source: SignalSpectrogram, crop: Crop, frames: numpy.ndarray) -> numpy.ndarray:
    """The crop's own spectrogram: the recording's frames from its start, the first one recomputed alone."""
    n_frames = source.front_end.n_frames(crop.stop - crop.start)
    chunk = numpy.array(frames[:n_frames])
    first = source.signal(crop.start, crop.start + source.win_length)
    chunk[0] = source.front_end.spectrogram(first)[0]
    return chunk


# -- pooling ----------------------------------------------------------------------------------


def pool_by_label(
    embeddings: numpy.ndarray, labels: Sequence[str], times: Optional[numpy.ndarray] = None
) -> Tuple[List[str], numpy.ndarray, Optional[numpy.ndarray]]:
    """One vector per label: the mean of its rows' unit vectors, normalised to unit length.

    Parameters
    ----------
    embeddings : numpy.ndarray
        ``(N, D)`` rows (unit vectors from the extractor).
    labels : sequence of str
        The label of each row.
    times : numpy.ndarray, optional
        ``(N, 2)`` start and end seconds of each row.

    Returns
    -------
    tuple
        The labels in order of first appearance, float32 ``(L, D)`` pooled
        vectors, and ``(L, 2)`` times: the earliest start and latest end of
        each label's rows (None without ``times``).

    >>> pooled = pool_by_label(numpy.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), ["a", "b", "a"])
    >>> pooled[0], pooled[1].tolist()
    (['a', 'b'], [[1.0, 0.0], [0.0, 1.0]])
    """
    embeddings = numpy.asarray(embeddings, dtype=numpy.float64)
    if len(labels) != len(embeddings):
        raise ValueError(f"got {len(embeddings)} embeddings but {len(labels)} labels")
    groups: "OrderedDict[str, List[int]]" = OrderedDict()
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    pooled = numpy.empty((len(groups), embeddings.shape[1]), dtype=numpy.float32)
    spans = None if times is None else numpy.empty((len(groups), 2), dtype=numpy.float64)
    for row, members in enumerate(groups.values()):
        mean = embeddings[members].mean(axis=0)
        pooled[row] = mean / max(float(numpy.linalg.norm(mean)), 1e-12)
        if spans is not None:
            spans[row] = times[members, 0].min(), times[members, 1].max()
    return list(groups), pooled, spans
