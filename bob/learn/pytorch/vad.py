"""Voice activity detection: which 10 ms frames of a recording hold speech.

A *voice activity detector* (VAD) is any callable taking ``(rate, samples)``
and returning a :class:`VoiceActivity`, or any pair ``(segments, labels)``:

- ``segments``: float64 ``(n, 2)`` array of speech ``[start, end)`` times in
  seconds, in order and not overlapping;
- ``labels``: bool ``(n_frames,)`` array, one label per 10 ms frame: frame
  ``k`` starts at ``k * 10`` ms, as frame ``k`` of the networks' spectrogram
  (25 ms windows every 10 ms), so that ``labels[k]`` says whether spectrogram
  frame ``k`` is kept.

Two detectors are provided:

- :class:`EnergyVAD` (``"energy"``), after bob.bio.spear's ``Energy_2Gauss``:
  the log energy of 20 ms windows every 10 ms, a two-Gaussian maximum
  likelihood fit (EM from a deterministic start: no random state, so the same
  input gives the same labels in any process), speech where the high-energy
  Gaussian is the more probable one, then a majority filter over 11 frames;
- :class:`SileroVAD` (``"silero"``), Silero's neural VAD from the
  ``silero-vad`` package (the ``vad`` extra: ``pip install
  bob.learn.pytorch[vad]``), whose weights ship in its wheel.

:func:`get_vad` turns a name or a callable into a detector, and
:func:`check_activity` checks what a detector returned.
"""
import math
from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

import numpy
import scipy.ndimage

from .frontend import INT16_SCALE, check_finite, check_magnitude, mono_samples, unpack_audio

__all__ = [
    "FRAME_SHIFT",
    "VoiceActivity",
    "EnergyVAD",
    "SileroVAD",
    "VAD_NAMES",
    "VadLike",
    "get_vad",
    "check_activity",
    "labels_to_segments",
    "segments_to_labels",
    "two_gaussian_fit",
]

#: Seconds between the starts of two VAD frames (the networks' spectrogram hop).
FRAME_SHIFT = 0.01
#: Names :func:`get_vad` knows.
VAD_NAMES = ("energy", "silero")
#: Frames of log energy computed at a time (bounds the temporary memory on long recordings).
_ENERGY_BLOCK_FRAMES = 4096


class VoiceActivity(NamedTuple):
    """What a voice activity detector returns.

    Attributes
    ----------
    segments : numpy.ndarray
        float64 ``(n, 2)``: ``[start, end)`` of each speech segment, in seconds.
    labels : numpy.ndarray
        bool ``(n_frames,)``: speech (True) or not, one label per 10 ms frame.
    """

    segments: numpy.ndarray
    labels: numpy.ndarray

    @property
    def speech_seconds(self) -> float:
        """Seconds of speech: 10 ms per speech frame."""
        return float(numpy.count_nonzero(self.labels)) * FRAME_SHIFT


VadLike = Union[None, str, Callable[[Any], Any]]


def labels_to_segments(labels: Any) -> numpy.ndarray:
    """``[start, end)`` seconds of each run of speech frames: frame ``k`` covers ``[k, k+1) * 10 ms``.

    >>> labels_to_segments([0, 1, 1, 0, 0, 1])
    array([[0.01, 0.03],
           [0.05, 0.06]])
    """
    labels = numpy.asarray(labels, dtype=bool)
    edges = numpy.diff(numpy.concatenate([[False], labels, [False]]).astype(numpy.int8))
    starts, ends = numpy.flatnonzero(edges == 1), numpy.flatnonzero(edges == -1)
    return numpy.stack([starts, ends], axis=1).astype(numpy.float64).reshape(-1, 2) * FRAME_SHIFT


def segments_to_labels(segments: Any, n_frames: int) -> numpy.ndarray:
    """Frame labels of speech segments in seconds: frame ``k`` is speech if its centre ``(k + 0.5) * 10 ms`` is in one.

    >>> segments_to_labels([[0.01, 0.03]], 5).astype(int)
    array([0, 1, 1, 0, 0])
    """
    centres = (numpy.arange(n_frames) + 0.5) * FRAME_SHIFT
    labels = numpy.zeros(n_frames, dtype=bool)
    for start, end in numpy.asarray(segments, dtype=numpy.float64).reshape(-1, 2):
        labels |= (centres >= start) & (centres < end)
    return labels


def check_activity(result: Any, source: str = "the VAD") -> VoiceActivity:
    """A detector's ``(segments, labels)`` as a checked :class:`VoiceActivity`.

    Raises
    ------
    TypeError
        If ``result`` is not a pair.
    ValueError
        If the segments are not an ``(n, 2)`` array of finite, ordered times
        or the labels not a 1-D array of 0/1 (or bool) values.
    """
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(
            f"{source} must return a (segments, labels) pair (a VoiceActivity), got {type(result).__name__}"
        )
    segments = numpy.asarray(result[0], dtype=numpy.float64)
    if segments.size == 0:
        segments = segments.reshape(0, 2)
    if segments.ndim != 2 or segments.shape[1] != 2:
        raise ValueError(f"{source} returned segments of shape {segments.shape}; expected (n, 2) start and end seconds")
    if not numpy.all(numpy.isfinite(segments)) or numpy.any(segments[:, 1] < segments[:, 0]) or numpy.any(segments < 0):
        raise ValueError(f"{source} returned segments that are not finite, non-negative [start, end) times")
    return VoiceActivity(segments, as_labels(result[1], source))


def as_labels(labels: Any, source: str = "labels") -> numpy.ndarray:
    """``labels`` as a 1-D bool array, or ``ValueError`` if they are not 0/1 (or bool) values, one per frame."""
    array = numpy.asarray(labels)
    if array.ndim != 1 or array.dtype.kind not in "biuf":
        raise ValueError(
            f"{source}: speech labels must be a 1-D array of 0/1 values, one per 10 ms frame; "
            f"got shape {array.shape}, dtype {array.dtype}"
        )
    bad = numpy.unique(array[(array != 0) & (array != 1)]) if array.size else array
    if bad.size:
        raise ValueError(f"{source}: speech labels must be 0 or 1, got {bad[:5].tolist()}")
    return array.astype(bool)


# -- the energy VAD ---------------------------------------------------------------------------


def two_gaussian_fit(
    values: numpy.ndarray, iterations: int = 100, tolerance: float = 1e-9
) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """Maximum-likelihood fit of two 1-D Gaussians by EM, from a deterministic start.

    The start splits the values at their median: each half gives one
    Gaussian's mean and variance, with equal weights. EM then runs until the
    mean log-likelihood improves by less than ``tolerance`` or for
    ``iterations`` steps. Variances are floored at 1e-3 of the values' variance.

    Returns
    -------
    tuple of numpy.ndarray
        ``(weights, means, variances)``, each of shape ``(2,)``, the lower mean first.

    >>> values = numpy.concatenate([numpy.linspace(-1, 1, 50), numpy.linspace(9, 11, 50)])
    >>> weights, means, variances = two_gaussian_fit(values)
    >>> weights.round(3).tolist(), (means.round(3) + 0.0).tolist()
    ([0.5, 0.5], [0.0, 10.0])
    """
    values = numpy.asarray(values, dtype=numpy.float64)
    floor = 1e-3 * max(float(values.var()), 1e-12)
    median = float(numpy.median(values))
    low, high = values[values <= median], values[values > median]
    if high.size == 0:  # more than half the values equal the largest
        low, high = values[values < median], values[values >= median]
    halves = [half if half.size else values for half in (low, high)]
    means = numpy.array([half.mean() for half in halves])
    variances = numpy.maximum([half.var() for half in halves], floor)
    weights = numpy.array([0.5, 0.5])
    previous = -numpy.inf
    for _ in range(iterations):
        log_joint = _log_joint(values, weights, means, variances)
        log_total = numpy.logaddexp(log_joint[:, 0], log_joint[:, 1])
        likelihood = float(log_total.mean())
        responsibilities = numpy.exp(log_joint - log_total[:, None])
        mass = responsibilities.sum(axis=0) + 1e-300
        weights = mass / mass.sum()
        means = (responsibilities * values[:, None]).sum(axis=0) / mass
        variances = numpy.maximum((responsibilities * numpy.square(values[:, None] - means)).sum(axis=0) / mass, floor)
        if likelihood - previous < tolerance:
            break
        previous = likelihood
    order = numpy.argsort(means, kind="stable")
    return weights[order], means[order], variances[order]


def _log_joint(values: numpy.ndarray, weights: numpy.ndarray, means: numpy.ndarray, variances: numpy.ndarray):
    """``log(weight_j * N(value | mean_j, variance_j))``, shape ``(n, 2)``."""
    squared = numpy.square(values[:, None] - means)
    return numpy.log(weights) - 0.5 * (numpy.log(2 * math.pi * variances) + squared / variances)


class EnergyVAD:
    """Energy VAD after bob.bio.spear's ``Energy_2Gauss``, deterministic.

    1. the log energy ``log(sum x**2)`` of 20 ms windows every 10 ms, on the
       samples in 16-bit steps (the original's ``2**15`` rule for floats in
       [-1, 1)); windows whose RMS is below ``silence_rms`` steps (digital
       silence) are non-speech and left out of the fit;
    2. a two-Gaussian maximum-likelihood fit of the other windows' log
       energies (:func:`two_gaussian_fit`; its start is the median split,
       so nothing is random);
    3. speech: the windows whose posterior is higher under the higher-mean
       Gaussian, and whose energy is above the lower Gaussian's mean;
    4. smoothing: a centred majority filter over ``smoothing`` frames
       (:func:`scipy.ndimage.median_filter` of the 0/1 labels).

    Frame ``k`` starts at sample ``round(k * rate / 100)``; there is one
    frame per complete 20 ms window.

    Parameters
    ----------
    smoothing : int
        Frames of the majority filter (odd; 11 frames is 50 ms on each side).
    silence_rms : float
        Windows below this RMS, in 16-bit steps, are digital silence.

    Examples
    --------
    >>> import numpy
    >>> noise = numpy.random.RandomState(0).randn(16000) * 3000
    >>> audio = numpy.concatenate([numpy.zeros(8000), noise, numpy.zeros(8000)])
    >>> activity = EnergyVAD()((16000, audio))
    >>> activity.segments  # the last frame's window reaches into the silence after the noise
    array([[0.5 , 1.49]])
    >>> len(activity.labels)
    199
    """

    name = "energy"

    def __init__(self, smoothing: int = 11, silence_rms: float = 1.0) -> None:
        if not (isinstance(smoothing, int) and smoothing >= 1 and smoothing % 2 == 1):
            raise ValueError(f"smoothing must be an odd positive number of frames, got {smoothing!r}")
        self.smoothing = smoothing
        self.silence_rms = float(silence_rms)

    def __call__(self, audio: Any) -> VoiceActivity:
        rate, samples, scale = _checked_samples(audio)
        energies, win_length = log_energies(samples, rate, scale)
        labels = numpy.zeros(len(energies), dtype=bool)
        audible = energies > math.log(win_length * self.silence_rms**2)
        if numpy.count_nonzero(audible) >= 2:
            values = energies[audible]
            if float(values.max() - values.min()) < 1e-6:  # one level: nothing to tell speech from
                labels[audible] = True
            else:
                weights, means, variances = two_gaussian_fit(values)
                log_joint = _log_joint(values, weights, means, variances)
                labels[audible] = (log_joint[:, 1] > log_joint[:, 0]) & (values > means[0])
        if self.smoothing > 1 and labels.size:
            labels = scipy.ndimage.median_filter(labels.astype(numpy.uint8), self.smoothing, mode="nearest") > 0
        return VoiceActivity(labels_to_segments(labels), labels)

    def __repr__(self) -> str:
        return f"EnergyVAD(smoothing={self.smoothing}, silence_rms={self.silence_rms:g})"


def _checked_samples(audio: Any) -> Tuple[int, numpy.ndarray, float]:
    """Rate, 1-D samples (not converted) and the factor of the ``2**15`` rule, checked as the extractor checks them."""
    rate, samples = unpack_audio(audio)
    samples = mono_samples(samples)
    if samples.dtype.kind == "f":
        check_finite(samples)
    peak = float(numpy.max(numpy.abs(samples.astype(numpy.float64)))) if samples.size else 0.0
    check_magnitude(peak)
    return rate, samples, INT16_SCALE if peak < 1 else 1.0


def frame_starts(n_samples: int, rate: int, win_length: int) -> numpy.ndarray:
    """First sample of each complete window: ``round(k * rate / 100)`` for every ``k`` that fits."""
    count = 0
    if n_samples >= win_length:
        count = int((n_samples - win_length) / (rate * FRAME_SHIFT)) + 2
        while count > 0 and round((count - 1) * rate * FRAME_SHIFT) + win_length > n_samples:
            count -= 1
    return numpy.array([round(k * rate * FRAME_SHIFT) for k in range(count)], dtype=numpy.int64)


def log_energies(samples: numpy.ndarray, rate: int, scale: float = 1.0) -> Tuple[numpy.ndarray, int]:
    """Natural log of the energy of 20 ms windows every 10 ms, block by block; and the window length in samples.

    Windows of zero energy get ``log(1e-300)``.
    """
    win_length = round(rate * 2 * FRAME_SHIFT)
    starts = frame_starts(len(samples), rate, win_length)
    energies = numpy.empty(len(starts), dtype=numpy.float64)
    offsets = numpy.arange(win_length)
    for first in range(0, len(starts), _ENERGY_BLOCK_FRAMES):
        block = starts[first : first + _ENERGY_BLOCK_FRAMES]
        frames = samples[block[:, None] + offsets].astype(numpy.float64) * scale
        energies[first : first + len(block)] = numpy.einsum("ij,ij->i", frames, frames)
    return numpy.log(numpy.maximum(energies, 1e-300)), win_length


# -- Silero VAD (optional) --------------------------------------------------------------------


class SileroVAD:
    """Silero's neural VAD (``silero-vad`` package, the ``vad`` extra), on the recording at 16 kHz.

    Its speech segments (``get_speech_timestamps``) give the frame labels
    (:func:`segments_to_labels`), one per 10 ms frame as the energy VAD's.
    The model loads on first use, from the weights in the package's wheel (no
    network); it is not pickled.

    Parameters
    ----------
    threshold : float
        Speech probability above which a 32 ms chunk is speech (Silero's default 0.5).
    min_silence_ms, min_speech_ms, speech_pad_ms : int
        Silero's segment post-processing (its defaults 100, 250, 30).
    """

    name = "silero"

    def __init__(
        self, threshold: float = 0.5, min_silence_ms: int = 100, min_speech_ms: int = 250, speech_pad_ms: int = 30
    ) -> None:
        self.threshold = threshold
        self.min_silence_ms = min_silence_ms
        self.min_speech_ms = min_speech_ms
        self.speech_pad_ms = speech_pad_ms
        self._model = None
        _import_silero()  # fail now, with the fix, rather than on first use

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _model=None)

    def __call__(self, audio: Any) -> VoiceActivity:
        import torch

        from .frontend import prepare_signal

        silero = _import_silero()
        rate, samples, _ = _checked_samples(audio)
        signal = prepare_signal((rate, samples), 16000) / INT16_SCALE
        if self._model is None:
            self._model = silero.load_silero_vad(onnx=True)
        stamps = silero.get_speech_timestamps(
            torch.from_numpy(signal.astype(numpy.float32)), self._model, threshold=self.threshold,
            sampling_rate=16000, min_silence_duration_ms=self.min_silence_ms,
            min_speech_duration_ms=self.min_speech_ms, speech_pad_ms=self.speech_pad_ms,
        )
        segments = numpy.array([[s["start"], s["end"]] for s in stamps], dtype=numpy.float64).reshape(-1, 2) / 16000
        n_frames = len(frame_starts(len(samples), rate, round(rate * 2 * FRAME_SHIFT)))
        return VoiceActivity(segments, segments_to_labels(segments, n_frames))

    def __repr__(self) -> str:
        return f"SileroVAD(threshold={self.threshold:g})"


def _import_silero() -> Any:
    try:
        import silero_vad
    except ImportError as exc:
        raise ImportError(
            "vad='silero' needs the silero-vad package: install the 'vad' extra, "
            "pip install 'bob.learn.pytorch[vad]' (or pip install silero-vad)"
        ) from exc
    return silero_vad


# -- by name ----------------------------------------------------------------------------------


def get_vad(vad: VadLike) -> Optional[Callable[[Any], Any]]:
    """The detector named by ``vad`` (``"energy"``, ``"silero"``), a callable as given, or None for None.

    Raises
    ------
    ValueError
        For an unknown name.
    TypeError
        For anything else that is not callable.
    ImportError
        For ``"silero"`` without the ``vad`` extra.

    >>> get_vad("energy")
    EnergyVAD(smoothing=11, silence_rms=1)
    """
    if vad is None or callable(vad):
        return vad
    if isinstance(vad, str):
        if vad == "energy":
            return EnergyVAD()
        if vad == "silero":
            return SileroVAD()
        raise ValueError(f"unknown VAD {vad!r}; use one of {', '.join(map(repr, VAD_NAMES))}, None or a callable")
    raise TypeError(
        f"vad must be None, {' or '.join(map(repr, VAD_NAMES))} or a callable returning (segments, labels), "
        f"got {type(vad).__name__}"
    )
