"""Voice activity detection (vad.py): the energy VAD on recordings with silence and noise at known places.

Measured on the 17 bundled recordings, each cut in the middle (on the 10 ms
grid) with 0.5 s of fill before, 1 s at the cut and 0.75 s after, the fill
being digital silence or Gaussian noise of RMS 30 or 300 steps (the speech
peaks at -3 dBFS, about 23200 steps):

- no frame of inserted fill more than 1 frame (10 ms) from its edges is ever
  labelled speech (:data:`MAX_INTRUSION_FRAMES`);
- the first and last speech frames found next to the outer fill lie at most
  45 frames (450 ms) inside the true start and end of the recording, 9 to 19
  frames in the median: the words start and end with low-energy sounds
  (:data:`MAX_EDGE_FRAMES`, :data:`MAX_MEDIAN_EDGE_FRAMES`).
"""
import subprocess
import sys

import numpy
import pytest
import scipy.io.wavfile

from bob.learn.pytorch import vad
from bob.learn.pytorch.vad import EnergyVAD, VoiceActivity, check_activity, get_vad, labels_to_segments

from .conftest import SPEECH

RECORDINGS = sorted(path.stem for path in SPEECH.glob("*.wav"))
#: Fill levels: digital silence, then noise of RMS 30 and 300 steps.
FILL_LEVELS = (0, 30, 300)
LEAD, GAP, TAIL = 8000, 16000, 12000  # samples at 16 kHz: 50, 100 and 75 frames
MAX_INTRUSION_FRAMES = 1
MAX_EDGE_FRAMES = 50
MAX_MEDIAN_EDGE_FRAMES = 20


def speech(name):
    return scipy.io.wavfile.read(SPEECH / f"{name}.wav")


def with_fill(samples, level, seed=0):
    """``samples`` cut in the middle (10 ms grid) with fill before, at the cut and after; and the fill's frames."""
    rng = numpy.random.RandomState(seed)
    cut = len(samples) // 2 // 160 * 160

    def fill(n):
        return (rng.randn(n) * level).round().astype(numpy.int16)

    joined = numpy.concatenate([fill(LEAD), samples[:cut], fill(GAP), samples[cut:], fill(TAIL)])
    gap_start = (LEAD + cut) // 160
    fills = [(0, LEAD // 160), (gap_start, gap_start + GAP // 160)]
    fills.append(((LEAD + GAP + len(samples)) // 160, None))
    return joined, fills


def intrusion(labels, start, stop):
    """Frames from the nearer edge of the deepest speech frame inside fill ``[start, stop)`` (0 if none)."""
    stop = len(labels) if stop is None else stop
    inside = numpy.flatnonzero(labels[start:stop])
    return max((min(i + 1, stop - start - i) for i in inside), default=0)


@pytest.mark.parametrize("level", FILL_LEVELS)
def test_energy_vad_finds_no_speech_in_inserted_silence_or_noise(level):
    detector = EnergyVAD()
    edges = []
    for name in RECORDINGS:
        rate, samples = speech(name)
        joined, fills = with_fill(samples, level)
        labels = detector((rate, joined)).labels
        assert max(intrusion(labels, start, stop) for start, stop in fills) <= MAX_INTRUSION_FRAMES, name
        found = numpy.flatnonzero(labels)
        first, last = LEAD // 160, (LEAD + GAP + len(samples)) // 160 - 1
        edges += [found[0] - first, last - found[-1]]
    assert min(edges) >= -MAX_INTRUSION_FRAMES
    assert max(edges) <= MAX_EDGE_FRAMES
    assert numpy.median(edges) <= MAX_MEDIAN_EDGE_FRAMES


def test_labels_and_segments_describe_the_same_frames():
    rate, samples = speech("librivox_0880")
    activity = EnergyVAD()((rate, samples))
    assert isinstance(activity, VoiceActivity)
    assert activity.labels.dtype == bool
    assert len(activity.labels) == 1 + (len(samples) - 320) // 160  # one per complete 20 ms window
    numpy.testing.assert_array_equal(activity.segments, labels_to_segments(activity.labels))
    numpy.testing.assert_array_equal(vad.segments_to_labels(activity.segments, len(activity.labels)), activity.labels)
    assert activity.speech_seconds == pytest.approx(numpy.sum(numpy.diff(activity.segments, axis=1)))
    assert 0.5 * len(samples) / rate < activity.speech_seconds < len(samples) / rate


def test_float_audio_gets_the_labels_of_its_int16_form():
    rate, samples = speech("flite_kal_u1")
    as_float = samples.astype(numpy.float32) / 2**15
    numpy.testing.assert_array_equal(EnergyVAD()((rate, as_float)).labels, EnergyVAD()((rate, samples)).labels)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_frames_follow_10_ms_at_any_rate(rate):
    """A noise burst over [1.005, 2.505) s, in weak noise, is found there at any rate, to the frame."""
    rng = numpy.random.RandomState(0)
    samples = rng.randn(3 * rate) * 10
    burst = slice(round(1.005 * rate), round(2.505 * rate))
    samples[burst] = rng.randn(burst.stop - burst.start) * 5000
    activity = EnergyVAD()((rate, samples.astype(numpy.int16)))
    assert len(activity.labels) == 299  # complete 20 ms windows every 10 ms in 3 s
    numpy.testing.assert_allclose(activity.segments, [[0.99, 2.51]], atol=1e-9)


def test_energy_vad_gives_the_same_labels_in_another_process():
    rate, samples = speech("fest_ked_u2")
    joined, _ = with_fill(samples, 30)
    here = EnergyVAD()((rate, joined)).labels
    code = (
        "import sys, numpy, scipy.io.wavfile\n"
        "from bob.learn.pytorch.test.test_vad import speech, with_fill\n"
        "from bob.learn.pytorch.vad import EnergyVAD\n"
        "rate, samples = speech('fest_ked_u2')\n"
        "labels = EnergyVAD()((rate, with_fill(samples, 30)[0])).labels\n"
        "sys.stdout.write(''.join('1' if x else '0' for x in labels))\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other == "".join("1" if x else "0" for x in here)


def test_digital_silence_is_no_speech():
    activity = EnergyVAD()((16000, numpy.zeros(32000, dtype=numpy.int16)))
    assert activity.segments.shape == (0, 2)
    assert len(activity.labels) == 199 and not activity.labels.any()


def test_audio_shorter_than_one_window_has_no_frame():
    activity = EnergyVAD()((16000, numpy.ones(100, dtype=numpy.int16)))
    assert activity.labels.shape == (0,) and activity.segments.shape == (0, 2)


def test_two_gaussian_fit_is_deterministic_and_separates_two_levels():
    values = numpy.concatenate([numpy.full(30, 2.0), numpy.full(70, 12.0)]) + numpy.linspace(-0.1, 0.1, 100)
    weights, means, variances = vad.two_gaussian_fit(values)
    numpy.testing.assert_allclose(weights, [0.3, 0.7], atol=1e-6)
    numpy.testing.assert_allclose(means, [2.0 - 0.1 + 0.2 * 14.5 / 99, 12.0 + 0.2 * (64.5 - 49.5) / 99], atol=1e-6)
    again = vad.two_gaussian_fit(values)
    for first, second in zip((weights, means, variances), again):
        numpy.testing.assert_array_equal(first, second)


def test_get_vad_names_callables_and_errors():
    assert isinstance(get_vad("energy"), EnergyVAD)
    assert get_vad(None) is None

    def mine(audio):
        return [[0.0, 1.0]], [1] * 100

    assert get_vad(mine) is mine
    with pytest.raises(ValueError, match=r"unknown VAD 'webrtc'; use one of 'energy', 'silero', None or a callable"):
        get_vad("webrtc")
    with pytest.raises(TypeError, match=r"vad must be None, 'energy' or 'silero' or a callable .* got int"):
        get_vad(3)
    with pytest.raises(ValueError, match=r"smoothing must be an odd positive number of frames, got 10"):
        EnergyVAD(smoothing=10)


def test_check_activity_refuses_malformed_results():
    assert check_activity(([[0.0, 0.5]], [0, 1, 1])).labels.tolist() == [False, True, True]
    with pytest.raises(TypeError, match=r"the VAD must return a \(segments, labels\) pair .* got list"):
        check_activity([1, 2, 3])
    with pytest.raises(ValueError, match=r"returned segments of shape \(3,\); expected \(n, 2\)"):
        check_activity(([0.0, 0.5, 1.0], [1]))
    with pytest.raises(ValueError, match=r"not finite, non-negative \[start, end\) times"):
        check_activity(([[1.0, 0.5]], [1]))
    with pytest.raises(ValueError, match=r"speech labels must be 0 or 1, got \[2\]"):
        check_activity(([[0.0, 0.5]], [0, 2]))
    with pytest.raises(ValueError, match=r"speech labels must be a 1-D array of 0/1 values, one per 10 ms frame"):
        check_activity(([[0.0, 0.5]], [[0, 1]]))


def test_silero_without_its_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # what a missing package looks like to import
    with pytest.raises(ImportError, match=r"vad='silero' needs the silero-vad package: install the 'vad' extra"):
        get_vad("silero")


def test_silero_finds_the_speech_between_inserted_silence():
    pytest.importorskip("silero_vad", reason="the 'vad' extra (silero-vad) is not installed")
    pytest.importorskip("onnxruntime", reason="the 'vad' extra (onnxruntime) is not installed")
    rate, samples = speech("librivox_0880")
    joined, fills = with_fill(samples, 0)
    activity = get_vad("silero")((rate, joined))
    assert len(activity.labels) == len(EnergyVAD()((rate, joined)).labels)
    numpy.testing.assert_array_equal(activity.labels, vad.segments_to_labels(activity.segments, len(activity.labels)))
    # Silero pads its segments by 30 ms: at most 3 frames of fill on each side are speech
    assert max(intrusion(activity.labels, start, stop) for start, stop in fills) <= 3
    assert activity.speech_seconds > 0.6 * len(samples) / rate
