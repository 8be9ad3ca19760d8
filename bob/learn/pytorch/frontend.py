"""Audio front end of the extractors: input checks, scaling, resampling, spectrogram.

Everything here runs in float64 NumPy and reproduces the original pipeline
(``bob.ap.Spectrogram`` in C++ plus ``scipy.signal.resample``) to within
floating-point rounding.
"""
import logging
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy
import scipy.fft
import scipy.signal

__all__ = [
    "FrontEnd",
    "BOB_AP_FRONT_END",
    "TARGET_RATE",
    "INT16_SCALE",
    "mono_samples",
    "check_finite",
    "check_magnitude",
    "check_rate",
    "unpack_audio",
    "peak_magnitude",
    "checked_samples",
    "prepare_signal",
    "frame_geometry",
    "spectrogram",
    "RESAMPLE_MEMORY_LIMIT",
    "resample_memory",
    "check_resample_memory",
    "SILENCE_PEAK",
    "warn_if_silent",
]

logger = logging.getLogger(__name__)

#: Factor applied to signals whose peak is below 1 (float audio in [-1, 1)).
INT16_SCALE = 2.0**15
#: Sampling rates accepted, in Hz (resampling from outside this range is not audio processing).
RATE_RANGE = (1000, 768000)
#: Largest sample magnitude accepted: beyond it the spectrogram's variance overflows float64.
MAX_MAGNITUDE = 1e100
#: Most memory, in bytes, that resampling one recording to 16 kHz may take (see :func:`resample_memory`).
RESAMPLE_MEMORY_LIMIT = 4 << 30
#: A recording whose peak, in 16-bit steps after the ``2**15`` rule, is below this is digital silence.
SILENCE_PEAK = 1.0
#: Frames of spectrogram computed at once: small enough for the working set to stay in the
#: CPU caches (measured 5x faster than 8192), which also bounds temporary memory.
_FRAMES_PER_BLOCK = 128


@dataclass(frozen=True)
class FrontEnd:
    """Sampling rate and ``bob.ap.Spectrogram`` settings of a network's input, in one place.

    The sizes in samples and bins derive from these as ``bob.ap`` derives them
    (:func:`frame_geometry`).

    >>> front_end = FrontEnd()
    >>> front_end.win_length, front_end.win_shift, front_end.fft_size, front_end.bins
    (400, 160, 512, 257)
    >>> front_end.n_frames(16000), front_end.samples_for(37)
    (98, 6160)
    """

    sample_rate: int = 16000
    win_length_ms: float = 25.0
    win_shift_ms: float = 10.0
    pre_emphasis_coeff: float = 0.97

    @property
    def win_length(self) -> int:
        """Window length in samples."""
        return frame_geometry(self.sample_rate, self.win_length_ms, self.win_shift_ms)[0]

    @property
    def win_shift(self) -> int:
        """Window shift (hop) in samples."""
        return frame_geometry(self.sample_rate, self.win_length_ms, self.win_shift_ms)[1]

    @property
    def fft_size(self) -> int:
        """FFT size: the window length rounded up to a power of two."""
        return frame_geometry(self.sample_rate, self.win_length_ms, self.win_shift_ms)[2]

    @property
    def bins(self) -> int:
        """Frequency bins of the spectrogram (``fft_size // 2 + 1``)."""
        return self.fft_size // 2 + 1

    def n_frames(self, n_samples: int) -> int:
        """Spectrogram frames of ``n_samples`` samples at :attr:`sample_rate`."""
        return 0 if n_samples < self.win_length else 1 + (n_samples - self.win_length) // self.win_shift

    def samples_for(self, n_frames: int) -> int:
        """Fewest samples that give ``n_frames`` frames."""
        return self.win_length + (n_frames - 1) * self.win_shift

    def resampled_length(self, n_samples: int, rate: int) -> int:
        """Length of ``n_samples`` samples at ``rate`` Hz once resampled to :attr:`sample_rate` (halves to even)."""
        return n_samples if rate == self.sample_rate else round(n_samples * self.sample_rate / rate)

    def spectrogram(self, signal: Any) -> numpy.ndarray:
        """:func:`spectrogram` of a signal at :attr:`sample_rate` with these settings (mean removed)."""
        return spectrogram(signal, self.sample_rate, self.win_length_ms, self.win_shift_ms, self.pre_emphasis_coeff)


#: The front end of the released networks: 16 kHz, 25 ms Hamming windows every 10 ms, pre-emphasis 0.97.
BOB_AP_FRONT_END = FrontEnd()
#: Sampling rate the released networks were trained at; other rates are resampled to it.
TARGET_RATE = BOB_AP_FRONT_END.sample_rate


def check_rate(rate: Any) -> int:
    """Return ``rate`` as an int, or raise ``ValueError`` if it is not a positive whole number of Hz."""
    if isinstance(rate, (bool, numpy.bool_)) or not isinstance(rate, numbers.Real):
        raise ValueError(f"sampling rate must be a positive number of Hz, got {rate!r} ({type(rate).__name__})")
    if not numpy.isfinite(rate) or rate <= 0:
        raise ValueError(f"sampling rate must be a positive number of Hz, got {rate!r}")
    if rate != int(rate):
        raise ValueError(f"sampling rate must be a whole number of Hz, got {rate!r}")
    low, high = RATE_RANGE
    if not low <= rate <= high:
        raise ValueError(f"sampling rate {rate!r} Hz is outside the supported range {low}-{high} Hz")
    return int(rate)


def mono_samples(samples: Any) -> numpy.ndarray:
    """Return ``samples`` as a 1-D numeric array without converting it (a view when possible).

    Accepts integer or floating-point arrays (and lists of numbers) of shape
    ``(N,)``, ``(N, 1)`` or ``(1, N)``. Rejects other dtypes with ``TypeError``
    and multi-channel or empty signals with ``ValueError``.
    """
    array = numpy.asarray(samples)
    if array.dtype.kind not in "iuf":
        raise TypeError(
            f"audio samples must be integers or floats, got dtype {array.dtype}; "
            "pass a numeric array such as the int16 samples of scipy.io.wavfile.read"
        )
    if array.ndim == 0:
        raise ValueError(
            f"audio samples must be an array of samples, got the single number {array.item()!r}; "
            "pass audio as (rate, samples) with samples of shape (N,)"
        )
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(
            f"audio must be mono, with shape (N,), (N, 1) or (1, N); got shape {array.shape}. "
            "Mix the channels down first, e.g. samples.mean(axis=1) for a (N, channels) array"
        )
    if array.size == 0:
        raise ValueError("audio is empty (0 samples)")
    return array


def check_finite(signal: numpy.ndarray) -> None:
    """Raise ``ValueError`` if ``signal`` holds NaN or infinite samples."""
    if signal.dtype.kind == "f" and not numpy.all(numpy.isfinite(signal)):
        bad = int(numpy.count_nonzero(~numpy.isfinite(signal)))
        raise ValueError(f"audio contains {bad} NaN or infinite sample(s); clean the signal first")


def check_magnitude(peak: float) -> None:
    """Raise ``ValueError`` if the peak sample magnitude is beyond :data:`MAX_MAGNITUDE`."""
    if peak > MAX_MAGNITUDE:
        raise ValueError(
            f"audio samples reach {peak:.3g}, beyond {MAX_MAGNITUDE:.0e}: not an audio signal; "
            "pass int16 samples or floats in [-1, 1]"
        )


def unpack_audio(audio: Any) -> Tuple[int, Any]:
    """Split a ``(rate, samples)`` pair, checking its form and the rate; the samples are not converted.

    Raises
    ------
    TypeError
        If ``audio`` is not a sequence of two items.
    ValueError
        If the rate is not a whole number of Hz in :data:`RATE_RANGE`.
    """
    if isinstance(audio, (str, bytes, Mapping)) or not hasattr(audio, "__getitem__") or not hasattr(audio, "__len__"):
        raise TypeError(f"audio must be a (rate, samples) pair, got {type(audio).__name__}")
    if len(audio) != 2:
        raise TypeError(f"audio must be a (rate, samples) pair, got a sequence of length {len(audio)}")
    return check_rate(audio[0]), audio[1]


def peak_magnitude(samples: numpy.ndarray, block_samples: int = 1 << 20) -> float:
    """Largest ``|sample|`` of a 1-D array, exactly, ``block_samples`` at a time, without a converted copy.

    Raises ``ValueError`` (:func:`check_finite`, counting every bad sample)
    if the array holds NaN or infinite samples: NumPy's ``max`` and ``min``
    propagate NaN, so both are finite only when every sample is.

    >>> peak_magnitude(numpy.array([-32768, 5], numpy.int16))  # Python ints: -(-32768) fits
    32768.0
    """
    peak = 0.0
    for start in range(0, len(samples), block_samples):
        block = samples[start : start + block_samples]
        if block.dtype.kind == "f":
            high, low = float(block.max()), float(block.min())
            if not (numpy.isfinite(high) and numpy.isfinite(low)):
                check_finite(samples)
            peak = max(peak, high, -low)
        else:
            peak = max(peak, float(max(int(block.max()), -int(block.min()))))
    return peak


def checked_samples(audio: Any, target_rate: int = TARGET_RATE, block_samples: int = 1 << 20) -> Tuple[numpy.ndarray, float]:
    """The one check of a ``(rate, samples)`` pair: ``(samples at target_rate, scale)``.

    The checks, in order: the pair and its rate (:func:`unpack_audio`), the
    samples' type, shape and length (:func:`mono_samples`), the memory
    resampling would take (:func:`check_resample_memory`), finite samples
    and a sane peak (:func:`peak_magnitude`, :func:`check_magnitude`), block
    by block. Then the original's ``2**15`` rule: a signal whose peak
    magnitude is strictly below 1 is to be multiplied by ``2**15``.

    Samples at ``target_rate`` are returned as given (a view, not converted)
    with the scale to apply after conversion to float64; others are
    converted, scaled and resampled with the FFT method of
    :func:`scipy.signal.resample` to ``round(N * target_rate / rate)``
    samples (halves to even), and returned with a scale of 1.

    Raises
    ------
    TypeError, ValueError
        Naming the problem (see the checks above).
    MemoryError
        If resampling would need more than :data:`RESAMPLE_MEMORY_LIMIT`,
        before anything is allocated.
    """
    rate, samples = unpack_audio(audio)
    samples = mono_samples(samples)
    if rate != target_rate:
        check_resample_memory(len(samples), rate, target_rate=target_rate)
    peak = peak_magnitude(samples, block_samples)
    check_magnitude(peak)
    scale = INT16_SCALE if peak < 1 else 1.0
    if rate == target_rate:
        return samples, scale
    length = round(len(samples) * target_rate / rate)
    if length < 1:
        raise ValueError(f"audio of {len(samples)} samples at {rate} Hz is empty once resampled to {target_rate} Hz")
    signal = samples.astype(numpy.float64)
    if scale != 1.0:
        signal *= scale
    return scipy.signal.resample(signal, length), 1.0


def prepare_signal(audio: Any, target_rate: int = TARGET_RATE) -> numpy.ndarray:
    """Turn a ``(rate, samples)`` pair into the float64 signal at ``target_rate`` the spectrogram takes.

    As the original: a signal whose peak magnitude is strictly below 1 is
    multiplied by 2**15 (float audio in [-1, 1) to the int16 range), then any
    other rate is resampled to ``target_rate`` with the FFT method of
    :func:`scipy.signal.resample`, the new length being
    ``round(N * target_rate / rate)`` (halves to even). The checks are those
    of :func:`checked_samples`.

    Parameters
    ----------
    audio : tuple
        ``(rate, samples)``, as returned by :func:`scipy.io.wavfile.read`.
    target_rate : int
        Sampling rate of the result (the network's front end's).

    Returns
    -------
    numpy.ndarray
        1-D float64 signal at ``target_rate`` (a new array).
    """
    samples, scale = checked_samples(audio, target_rate)
    signal = numpy.array(samples, dtype=numpy.float64)
    if scale != 1.0:
        signal *= scale
    return signal


def frame_geometry(rate: int, win_length_ms: float = 25.0, win_shift_ms: float = 10.0) -> Tuple[int, int, int]:
    """Window length, window shift and FFT size in samples, as bob.ap derives them.

    >>> frame_geometry(16000)
    (400, 160, 512)
    """
    win_length = int(rate * win_length_ms / 1000)
    win_shift = int(rate * win_shift_ms / 1000)
    if win_length < 1 or win_shift < 1:
        raise ValueError(
            f"window of {win_length_ms} ms shifted by {win_shift_ms} ms is shorter than one sample at {rate} Hz"
        )
    fft_size = 1 << (win_length - 1).bit_length()
    return win_length, win_shift, fft_size


def spectrogram(
    data: Any,
    rate: int,
    win_length_ms: float = 25.0,
    win_shift_ms: float = 10.0,
    pre_emphasis_coeff: float = 0.97,
    normalize_mean: bool = True,
) -> numpy.ndarray:
    """Magnitude spectrogram, exactly as ``bob.ap.Spectrogram`` computes it for the extractors.

    Each frame of ``win_length`` samples (every ``win_shift`` samples) has its
    mean removed (sum divided by the FFT size, not the window length), is
    pre-emphasised with the previous frame's mean-removed sample at index
    ``win_shift - 1`` carried over, Hamming-windowed, zero-padded to the next
    power of two and transformed; the output is ``|X[k]|`` for the
    ``fft_size // 2 + 1`` non-negative frequencies. No filterbank, no log.

    Parameters
    ----------
    data : array_like
        1-D signal (converted to float64).
    rate : int
        Sampling rate in Hz; the window sizes in samples derive from it.
    win_length_ms, win_shift_ms : float
        Window length and shift in milliseconds.
    pre_emphasis_coeff : float
        Pre-emphasis coefficient; 0 disables it.
    normalize_mean : bool
        Remove each frame's mean (True, the extractors' setting); when False
        the frame is instead divided by ``2**(rate/1000)/2 - 0.5`` as bob.ap does.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(T, fft_size // 2 + 1)`` with
        ``T = 1 + (N - win_length) // win_shift``.

    Raises
    ------
    ValueError
        If the signal is shorter than one window.

    Examples
    --------
    >>> import numpy
    >>> spectrogram(numpy.random.RandomState(0).randn(16000), 16000).shape
    (98, 257)
    """
    signal = numpy.asarray(data, dtype=numpy.float64)
    if signal.ndim != 1:
        raise ValueError(f"spectrogram needs a 1-D signal, got shape {signal.shape}")
    rate = check_rate(rate)
    win_length, win_shift, fft_size = frame_geometry(rate, win_length_ms, win_shift_ms)
    if len(signal) < win_length:
        raise ValueError(
            f"signal of {len(signal)} samples is shorter than one window of {win_length} samples "
            f"({win_length_ms} ms at {rate} Hz)"
        )
    n_frames = 1 + (len(signal) - win_length) // win_shift
    frames = numpy.lib.stride_tricks.sliding_window_view(signal, win_length)[::win_shift][:n_frames]
    offsets = frames.sum(axis=1) / fft_size if normalize_mean else numpy.zeros(n_frames)
    divisor = 1.0 if normalize_mean else 2.0 ** (rate / 1000.0) / 2.0 - 0.5
    window = numpy.hamming(win_length)
    if pre_emphasis_coeff != 0:
        emphasised = _emphasised_frames(signal, pre_emphasis_coeff, win_length, win_shift, n_frames)
        previous = _carried_samples(signal, offsets, win_length, win_shift)
    output = numpy.empty((n_frames, fft_size // 2 + 1), dtype=numpy.float64)
    for start in range(0, n_frames, _FRAMES_PER_BLOCK):
        stop = min(start + _FRAMES_PER_BLOCK, n_frames)
        offset = offsets[start:stop, None]
        padded = numpy.zeros((stop - start, fft_size), dtype=numpy.float64)
        block = padded[:, :win_length]
        if pre_emphasis_coeff != 0:
            # (x[k] - m) - a (x[k-1] - m) = (x[k] - a x[k-1]) - (1 - a) m for the samples after the first
            numpy.subtract(emphasised[start:stop], (1.0 - pre_emphasis_coeff) * offset, out=block[:, 1:])
            block[:, 0] = (frames[start:stop, 0] - offset[:, 0]) - pre_emphasis_coeff * previous[start:stop]
        else:
            numpy.subtract(frames[start:stop], offset, out=block)
        if divisor != 1.0:
            block /= divisor
        block *= window
        # a zero-padded contiguous input is several times faster than rfft(..., n=fft_size)
        output[start:stop] = numpy.abs(scipy.fft.rfft(padded, axis=1, overwrite_x=True))
    return output


def _emphasised_frames(
    signal: numpy.ndarray, coeff: float, win_length: int, win_shift: int, n_frames: int
) -> numpy.ndarray:
    """``x[k] - coeff * x[k-1]`` for samples 1 … win_length-1 of every frame (a strided view)."""
    difference = signal[1:] - coeff * signal[:-1]
    return numpy.lib.stride_tricks.sliding_window_view(difference, win_length - 1)[::win_shift][:n_frames]


def _carried_samples(
    signal: numpy.ndarray, offsets: numpy.ndarray, win_length: int, win_shift: int
) -> numpy.ndarray:
    """The sample pre-emphasising each frame's first one: the previous frame's centred sample ``win_shift - 1``.

    Zero for the first frame, and for all frames when the shift exceeds the
    window (that sample then lies in the zero padding).
    """
    previous = numpy.zeros(len(offsets), dtype=numpy.float64)
    if win_shift <= win_length and len(offsets) > 1:
        previous[1:] = signal[win_shift - 1 :: win_shift][: len(offsets) - 1] - offsets[:-1]
    return previous


# -- resampling memory ------------------------------------------------------------------------


def _factors(n: int) -> list:
    found, divisor = [], 2
    while divisor * divisor <= n:
        while n % divisor == 0:
            found.append(divisor)
            n //= divisor
        divisor += 1 if divisor == 2 else 2
    return found + ([n] if n > 1 else [])


def _cost_guess(n: int) -> float:
    """pocketfft's estimate of the work of an FFT of length ``n`` (larger prime factors cost more)."""
    return n * sum(factor if factor <= 5 else 1.1 * factor for factor in _factors(n))


def _good_size(n: int) -> int:
    """The smallest length >= ``n`` whose prime factors are all 2, 3, 5, 7 or 11 (pocketfft's ``good_size``)."""
    best = 1 << max(n - 1, 0).bit_length()
    f11 = 1
    while f11 < best:
        f7 = f11
        while f7 < best:
            f5 = f7
            while f5 < best:
                f3 = f5
                while f3 < best:
                    candidate = f3
                    while candidate < n:
                        candidate *= 2
                    best = min(best, candidate)
                    f3 *= 3
                f5 *= 5
            f7 *= 7
        f11 *= 11
    return best


def _bluestein_length(n: int) -> int:
    """The padded length pocketfft's real FFT of length ``n`` computes with Bluestein's method, or 0 if it does not."""
    if n < 50 or max(_factors(n)) ** 2 <= n:
        return 0
    padded = _good_size(2 * n - 1)
    return padded if 1.5 * 2 * _cost_guess(padded) < 0.5 * _cost_guess(n) else 0


def resample_memory(n_samples: int, rate: int, target_rate: int = TARGET_RATE) -> int:
    """Bytes that resampling ``n_samples`` at ``rate`` Hz to ``target_rate`` takes, as :func:`prepare_signal` does it.

    :func:`scipy.signal.resample` transforms the whole signal: about 32 bytes
    per input and output sample (the float64 signal, its spectrum, pocketfft's
    buffers), plus about 60 bytes per point of the padded transform when a
    length has a large prime factor and pocketfft uses Bluestein's method
    (a padded length of about twice the signal). So the memory depends on the
    factors of the lengths: a prime number of samples takes about five times
    as much as a round one. The estimate was checked against the peak
    resident memory of the call.

    >>> resample_memory(44100 * 60, 44100) // 2**20  # one minute at 44.1 kHz (a round length)
    110
    >>> resample_memory(2646001, 44100) // 2**20  # one sample more: a length with a large prime factor
    412
    """
    n_out = round(n_samples * target_rate / rate)
    padded = _bluestein_length(n_samples) + _bluestein_length(n_out)
    return 32 * (n_samples + n_out) + 60 * padded


def check_resample_memory(
    n_samples: int, rate: int, limit: Optional[int] = None, target_rate: int = TARGET_RATE
) -> None:
    """Raise ``MemoryError`` if resampling to ``target_rate`` would take more than ``limit`` bytes.

    Parameters
    ----------
    n_samples, rate : int
        Length and sampling rate of the recording.
    limit : int, optional
        Default :data:`RESAMPLE_MEMORY_LIMIT` (4 GiB).
    target_rate : int
        The network's sampling rate.
    """
    limit = RESAMPLE_MEMORY_LIMIT if limit is None else limit
    needed = resample_memory(n_samples, rate, target_rate)
    if needed > limit:
        raise MemoryError(
            f"resampling {n_samples} samples ({n_samples / rate / 60:.1f} min) from {rate} Hz to {target_rate} Hz "
            f"as the original does (one FFT of the whole signal) would take about {needed / 2**30:.1f} GiB, more "
            f"than the limit of {limit / 2**30:g} GiB; resample the recording to {target_rate / 1000:g} kHz beforehand, e.g. "
            f"'sox in.wav -r 16000 out.wav' or scipy.signal.resample_poly, or cut it into shorter recordings"
        )


# -- digital silence --------------------------------------------------------------------------


def _peak(samples: numpy.ndarray) -> float:
    """Largest magnitude, without a converted copy of the samples."""
    if samples.size == 0:
        return 0.0
    return max(abs(float(numpy.max(samples))), abs(float(numpy.min(samples))))


def warn_if_silent(samples: Any, scale: float = 1.0, name: str = "recording") -> bool:
    """Log a warning and return True if ``samples * scale`` is digital silence.

    ``scale`` is the factor of the ``2**15`` rule (``2**15`` for float audio
    in [-1, 1) not yet scaled, else 1), so that ``samples * scale`` is in
    16-bit steps.

    Digital silence is a peak below :data:`SILENCE_PEAK` (one step of 16-bit
    audio) once the ``2**15`` rule is applied: all zeros, or a signal too weak
    to be represented in 16 bits. Its embedding is computed as the original
    did (a unit vector), but describes no speaker: all-zero recordings of the
    same duration all get the same one (cosine 1.0), whatever their rate or
    sample type.
    """
    peak = _peak(numpy.asarray(samples)) * scale
    if peak >= SILENCE_PEAK:
        return False
    logger.warning(
        "%s is digital silence (peak %.3g, below one step of 16-bit audio): its embedding describes no speaker "
        "(all-zero recordings of the same duration all get the same one, cosine 1.0)", name, peak,
    )
    return True
