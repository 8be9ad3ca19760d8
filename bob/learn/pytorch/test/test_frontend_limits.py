"""Valid but suspicious inputs: digital silence (a warning per recording) and resampling beyond the memory limit."""
import logging
import subprocess
import sys

import numpy
import pytest
import scipy.signal

from bob.learn.pytorch import frontend
from bob.learn.pytorch.frontend import (
    RESAMPLE_MEMORY_LIMIT,
    check_resample_memory,
    resample_memory,
    warn_if_silent,
)

LOGGER = "bob.learn.pytorch.frontend"
NOISE = numpy.random.RandomState(5).randint(-3000, 3000, 16000).astype(numpy.int16)
PRIME_20_MIN = 52920037  # the first prime above 20 min at 44.1 kHz


def silence_warnings(caplog):
    return [record for record in caplog.records if "digital silence" in record.getMessage()]


@pytest.mark.parametrize(
    "samples",
    [numpy.zeros(16000, numpy.int16), numpy.zeros(24000), numpy.full(16000, 1e-9), NOISE * 1e-300],
    ids=["int16 zeros", "float zeros", "constant 1e-9", "noise at 1e-300"],
)
def test_digital_silence_warns_once_and_keeps_the_originals_numbers(drn_extractor, caplog, samples):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        embedding = drn_extractor((16000, samples))
    [warning] = silence_warnings(caplog)
    assert "is digital silence" in warning.getMessage() and "describes no speaker" in warning.getMessage()
    assert embedding.shape == (1, 128) and numpy.isclose(numpy.linalg.norm(embedding), 1.0)
    assert numpy.all(numpy.isfinite(embedding))


def test_all_zero_recordings_all_get_the_same_embedding(drn_extractor):
    """What the warning says: the original's numbers, cosine 1.0 between silent files of one duration."""
    int16 = drn_extractor((16000, numpy.zeros(48000, numpy.int16)))
    float_22k = drn_extractor((22050, numpy.zeros(3 * 22050)))
    assert float(int16 @ float_22k.T) == pytest.approx(1.0, abs=1e-6)


def test_each_silent_recording_of_a_batch_warns_once(drn_extractor, caplog):
    audios = [(16000, numpy.zeros(16000, numpy.int16)), (16000, NOISE), (22050, numpy.zeros(22050))]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        drn_extractor.embed_many(audios)
    assert len(silence_warnings(caplog)) == 2


@pytest.mark.parametrize(
    "samples, scale, silent",
    [
        (numpy.array([0, 1, -1], numpy.int16), 1.0, False),  # one 16-bit step
        (numpy.array([0.0, 0.5 / 2**15]), 2.0**15, True),  # half a step once scaled
        (numpy.array([0.0, 1.0 / 2**15]), 2.0**15, False),
        (numpy.array([-32768, 0], numpy.int16), 1.0, False),  # no overflow of abs(int16)
    ],
)
def test_silence_is_a_peak_below_one_16_bit_step(samples, scale, silent):
    assert warn_if_silent(samples, scale) is silent


def test_a_recording_with_sound_gives_no_warning(drn_extractor, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        drn_extractor((16000, NOISE))
    assert silence_warnings(caplog) == []


def test_a_long_prime_length_recording_is_refused_before_resampling(drn_extractor, monkeypatch):
    """20 min at 44.1 kHz with a prime number of samples took 8.9 GB: refused before anything is allocated."""
    monkeypatch.setattr(scipy.signal, "resample", lambda *args: pytest.fail("resampling must not start"))
    samples = numpy.zeros(PRIME_20_MIN, numpy.int16)  # pages are mapped lazily: nothing is really allocated
    with pytest.raises(MemoryError) as caught:
        drn_extractor((44100, samples))
    message = str(caught.value)
    assert f"resampling {PRIME_20_MIN} samples (20.0 min) from 44100 Hz to 16000 Hz" in message
    assert "would take about 8.1 GiB, more than the limit of 4 GiB" in message
    assert "resample the recording to 16 kHz beforehand" in message


def test_a_round_length_of_the_same_duration_is_within_the_limit():
    assert resample_memory(44100 * 1200, 44100) < RESAMPLE_MEMORY_LIMIT < resample_memory(PRIME_20_MIN, 44100)
    check_resample_memory(44100 * 1200, 44100)


def test_the_limit_applies_to_spectrogram_too(drn_extractor, monkeypatch):
    monkeypatch.setattr(frontend, "RESAMPLE_MEMORY_LIMIT", 1 << 20)
    with pytest.raises(MemoryError, match="more than the limit of 0.000976562 GiB"):
        drn_extractor.spectrogram((22050, numpy.zeros(22051, numpy.int16)))


MEASURE = """
import re, sys, numpy, scipy.signal
def high_water():  # peak resident memory of this process image (ru_maxrss would include the parent's)
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024
n, rate = int(sys.argv[1]), int(sys.argv[2])
x = numpy.random.RandomState(0).randn(n)
scipy.signal.resample(x[:1000], 300)
before = high_water()
scipy.signal.resample(x, round(n * 16000 / rate))
print(high_water() - before)
"""


@pytest.mark.parametrize("n_samples, rate", [(2646000, 44100), (2000003, 44100), (3000000, 22050)])
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_estimate_bounds_the_memory_resampling_takes(n_samples, rate):
    """Peak resident memory of scipy's resampler in a fresh process: the estimate is above it, and not far."""
    measured = int(subprocess.run(
        [sys.executable, "-c", MEASURE, str(n_samples), str(rate)], capture_output=True, text=True, check=True, timeout=300
    ).stdout)
    estimate = resample_memory(n_samples, rate)
    assert measured <= estimate <= 2 * measured
