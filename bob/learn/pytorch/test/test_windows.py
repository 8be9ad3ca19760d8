"""What gets embedded (windows.py): speech only, sliding windows and given segments, against their crops.

Contracts held here:

- every window or segment row equals the extractor's embedding of exactly its
  crop ``[round(start * rate), round(end * rate))`` within 1e-5 (:data:`ATOL`),
  whichever way it was computed (spectrogram shared, or crop by crop);
- the speech-only embedding is the embedding of the spectrogram's speech
  frames, and inserting digital silence (whole 10 ms frames) in a pause
  between words does not change it, within 1e-6, whenever the VAD labels the
  words' frames as before: measured on 16 of the 17 bundled recordings (cut in
  the middle of their longest pause, 1 s inserted there and 0.5 s at each
  end); in fest_ked_u2 the frames straddling the inserted silence shift the
  two-Gaussian fit so that 4 of its 336 frames change label;
- too little speech, including all-silence input, is a ValueError naming the
  speech found.
"""
import re
import sys

import numpy
import pytest
import scipy.io.wavfile
import scipy.signal

from bob.learn.pytorch import windows
from bob.learn.pytorch.embedding import embed_chunks
from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor
from bob.learn.pytorch.vad import EnergyVAD, labels_to_segments

from .conftest import REPO, SPEECH

ATOL = 1e-5
#: Speech-only embeddings with silence inserted where the VAD labels are unchanged.
SPEECH_ATOL = 1e-6
RECORDINGS = sorted(path.stem for path in SPEECH.glob("*.wav"))
#: The recording whose labels the inserted silence changes (see the module's docstring).
LABELS_CHANGE = {"fest_ked_u2": 4}


def speech(name):
    return scipy.io.wavfile.read(SPEECH / f"{name}.wav")


def long_speech():
    """About 9 s of int16 speech: three recordings end to end."""
    return 16000, numpy.concatenate([speech(name)[1] for name in ("librivox_0880", "flite_kal_u1", "fest_ked_u2")])


@pytest.fixture(scope="module")
def extractor(drn_file):
    return EmbeddingExtractor("dltresnet34", drn_file)


@pytest.fixture(scope="module")
def vad_extractor(drn_file):
    return EmbeddingExtractor("dltresnet34", drn_file, vad="energy")


def crop_embeddings(extractor, audio, times):
    rate, samples = audio
    return numpy.vstack([extractor((rate, samples[round(s * rate) : round(e * rate)])) for s, e in times])


# -- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "window, step", [(2.0, 0.5), (1.5, 1.5), (1.0, 1.25), (0.5, 0.1), (1.0, 0.0125)],
    ids=["overlapping", "adjacent", "gaps", "short", "off-grid-step"],
)
def test_window_rows_equal_their_crops(extractor, window, step):
    audio = long_speech()
    embeddings, times = extractor.embed_windows(audio, window, step)
    duration = len(audio[1]) / audio[0]
    expected_rows = int(numpy.floor((duration - window) / step + 1e-9)) + 1
    assert embeddings.shape == (expected_rows, 128) and embeddings.dtype == numpy.float32
    numpy.testing.assert_allclose(times[:, 0], numpy.arange(expected_rows) * step, atol=1e-12)
    numpy.testing.assert_allclose(times[:, 1] - times[:, 0], window, atol=1e-12)
    assert times[-1, 1] <= duration
    sample = slice(None) if len(times) < 40 else slice(None, None, 7)  # a subset for the many short windows
    numpy.testing.assert_allclose(embeddings[sample], crop_embeddings(extractor, audio, times[sample]), rtol=0, atol=ATOL)


@pytest.mark.parametrize("rate", [16000, 44100], ids=["network-rate", "resampled"])
def test_float_windows_equal_their_crops(extractor, rate):
    base_rate, samples = speech("librivox_0930")
    signal = samples.astype(numpy.float64) / 2**15
    if rate != base_rate:
        signal = scipy.signal.resample_poly(signal, 441, 160)
    audio = (rate, signal.astype(numpy.float32))
    embeddings, times = extractor.embed_windows(audio, 1.0, 0.5)
    numpy.testing.assert_allclose(embeddings, crop_embeddings(extractor, audio, times), rtol=0, atol=ATOL)


def test_quiet_float_window_is_scaled_as_its_crop(extractor):
    """A float crop whose peak is below 1 gets the 2**15 rule on its own, as the extractor applies it."""
    rate, samples = speech("flite_kal_u1")
    signal = samples.astype(numpy.float64)
    signal[: rate] *= 0.5 / numpy.abs(signal[: rate]).max()  # the first second peaks at 0.5
    audio = (rate, signal)
    embeddings, times = extractor.embed_windows(audio, 1.0, 0.5)
    numpy.testing.assert_allclose(embeddings, crop_embeddings(extractor, audio, times), rtol=0, atol=ATOL)


def test_windows_of_a_network_in_train_mode_are_embedded_one_by_one():
    extractor = EmbeddingExtractor("dltresnet34", test=True)
    audio = speech("librivox_0880")
    embeddings, times = extractor.embed_windows(audio, 1.0, 0.5)
    numpy.testing.assert_allclose(embeddings, crop_embeddings(extractor, audio, times), rtol=0, atol=ATOL)


def test_shared_spectrogram_equals_each_crops_own(extractor):
    """The frames the windows take from the recording's spectrogram are the crop's spectrogram, to rounding."""
    audio = long_speech()
    source = windows.signal_source(audio, extractor.pretrained.front_end)
    crops = windows._crops(windows.window_times(len(audio[1]) / 16000, 1.0, 0.3), 16000, len(audio[1]))
    for batch in windows._batches(crops, source):
        for crop, frames in batch:
            shared = windows._crop_frames(source, crop, frames)
            own = extractor.spectrogram((16000, audio[1][crop.start : crop.stop]))
            numpy.testing.assert_allclose(shared, own, rtol=1e-12, atol=1e-9)


def test_window_times():
    numpy.testing.assert_allclose(windows.window_times(3.0, 2.0, 0.5), [[0, 2], [0.5, 2.5], [1, 3]])
    assert windows.window_times(1.0, 2.0, 0.5).shape == (0, 2)
    # 0.1 * 29 + 0.2 is 3.0000000000000004: the last window still fits
    assert len(windows.window_times(3.0, 0.2, 0.1)) == 29


@pytest.mark.parametrize(
    "window, step, error, message",
    [
        (0.3, 0.1, ValueError, r"window of 0.3 s is shorter than the network's shortest input, 37 frames \(0.385 s\)"),
        (1.0, 0.0, ValueError, r"step must be a positive number of seconds, got 0.0"),
        (float("nan"), 1.0, ValueError, r"window must be a positive number of seconds, got nan"),
        ("1", 1.0, TypeError, r"window must be a number of seconds, got str"),
        (20.0, 1.0, ValueError, r"the recording \(2.990 s\) is shorter than one window of 20 s"),
    ],
)
def test_window_errors(extractor, window, step, error, message):
    with pytest.raises(error, match=message):
        extractor.embed_windows(speech("librivox_0880"), window, step)


# -- segments ---------------------------------------------------------------------------------


def test_segment_rows_equal_their_crops_and_pool_by_label(extractor):
    audio = long_speech()
    segments = [(0.013, 1.2, "A"), (1.0, 2.5, "B"), (2.0, 5.0, "A"), (0.5, 0.9, "B"), (8.0, 9.0, "C")]
    embeddings = extractor.embed_segments(audio, segments)
    expected = crop_embeddings(extractor, audio, [s[:2] for s in segments])
    numpy.testing.assert_allclose(embeddings, expected, rtol=0, atol=ATOL)

    times, labels = windows.check_segments(segments, len(audio[1]) / 16000)
    names, pooled, spans = windows.pool_by_label(embeddings, labels, times)
    assert names == ["A", "B", "C"]
    for row, members in enumerate([[0, 2], [1, 3], [4]]):
        mean = embeddings[members].astype(numpy.float64).mean(axis=0)
        numpy.testing.assert_allclose(pooled[row], mean / numpy.linalg.norm(mean), rtol=0, atol=1e-6)
    numpy.testing.assert_allclose(spans, [[0.013, 5.0], [0.5, 2.5], [8.0, 9.0]])


def test_unlabelled_segments(extractor):
    audio = speech("librivox_0930")
    embeddings = extractor.embed_segments(audio, numpy.array([[0.0, 1.0], [1.5, 3.29]]))
    numpy.testing.assert_allclose(
        embeddings, crop_embeddings(extractor, audio, [(0.0, 1.0), (1.5, 3.29)]), rtol=0, atol=ATOL
    )


@pytest.mark.parametrize(
    "segments, message",
    [
        ([], r"no segment given: pass \(start, end\[, label\]\) rows in seconds"),
        ([(0.0, 1.0), (1.0, 0.5)], r"segment 1: \[1, 0.5\) s is not a segment \(need 0 <= start < end\)"),
        ([(0.0, 1.0, "a", "b")], r"segment 0: expected \(start, end\[, label\]\), got 4 fields"),
        ([(0.0, 4.0)], r"segment 0: ends at 4 s, after the end of the recording \(2.990 s\)"),
        ([("x", 1.0)], r"segment 0: start and end must be numbers of seconds"),
        ([(0.0, 1.0, "a"), (1.0, 2.0)], r"segments: give a label to every row, or to none"),
        ([(0.0, 1.0), (1.0, 1.2)], r"segment 1: \[1, 1.2\) s is shorter than the network's shortest input \(0.385 s\)"),
    ],
)
def test_segment_errors(extractor, segments, message):
    with pytest.raises(ValueError, match=message):
        extractor.embed_segments(speech("librivox_0880"), segments)


# -- speech only ------------------------------------------------------------------------------


def test_speech_embedding_is_the_embedding_of_the_speech_frames(vad_extractor, extractor):
    audio = speech("librivox_0880")
    embedding, kept = vad_extractor.embed_speech(audio)
    specs = extractor.spectrogram(audio)
    assert kept.shape == (len(specs),) and kept.dtype == bool
    labels = vad_extractor.voice_activity(audio).labels
    numpy.testing.assert_array_equal(kept, labels[: len(specs)])
    expected = embed_chunks(extractor.pipeline.forward(), [specs[kept]])
    numpy.testing.assert_allclose(embedding, expected, rtol=0, atol=ATOL)
    numpy.testing.assert_array_equal(vad_extractor(audio), embedding)
    numpy.testing.assert_allclose(vad_extractor.embed_many([audio, audio]), numpy.vstack([embedding] * 2), atol=ATOL)


def test_long_speech_embedding_streams_the_speech_frames(drn_file, extractor):
    streaming = EmbeddingExtractor("dltresnet34", drn_file, vad="energy")
    streaming.pipeline.streaming_min_frames = 300  # this recording's speech is streamed block by block
    audio = long_speech()
    embedding, kept = streaming.embed_speech(audio)
    assert kept.sum() >= 300
    expected = embed_chunks(extractor.pipeline.forward(), [extractor.spectrogram(audio)[kept]])
    numpy.testing.assert_allclose(embedding, expected, rtol=0, atol=ATOL)


def test_inserted_silence_does_not_change_the_speech_embedding(vad_extractor):
    for name in RECORDINGS:
        rate, samples = speech(name)
        labels = EnergyVAD()((rate, samples)).labels
        pauses = (labels_to_segments(labels) * 100).round().astype(int)
        start, stop = max(zip(pauses[:-1, 1], pauses[1:, 0]), key=lambda pause: pause[1] - pause[0])
        cut = (start + stop) // 2
        zeros = numpy.zeros(rate, dtype=samples.dtype)
        joined = numpy.concatenate([zeros[:8000], samples[: 160 * cut], zeros, samples[160 * cut :], zeros[:8000]])
        again = EnergyVAD()((rate, joined)).labels
        moved = numpy.concatenate([again[50 : 50 + cut], again[150 + cut : 150 + len(labels)]])
        changed = int(numpy.count_nonzero(moved != labels))
        assert changed == LABELS_CHANGE.get(name, 0), name
        if not changed:
            numpy.testing.assert_allclose(
                vad_extractor((rate, joined)), vad_extractor((rate, samples)), rtol=0, atol=SPEECH_ATOL, err_msg=name
            )


def test_given_labels_choose_the_frames(extractor):
    audio = speech("flite_kal_u1")
    n_frames = len(extractor.spectrogram(audio))
    labels = numpy.zeros(n_frames + 5, dtype=int)
    labels[40:200] = 1
    embedding, kept = extractor.embed_speech(audio, labels=labels)
    assert kept.sum() == 160
    expected = embed_chunks(extractor.pipeline.forward(), [extractor.spectrogram(audio)[40:200]])
    numpy.testing.assert_allclose(embedding, expected, rtol=0, atol=ATOL)


def test_a_callable_vad(drn_file):
    def first_second(audio):
        labels = numpy.zeros(300, dtype=bool)
        labels[:100] = True
        return labels_to_segments(labels), labels

    custom = EmbeddingExtractor("dltresnet34", drn_file, vad=first_second)
    audio = speech("librivox_0880")
    embedding, kept = custom.embed_speech(audio)
    assert numpy.flatnonzero(kept).tolist() == list(range(100))
    assert custom.voice_activity(audio).segments.tolist() == [[0.0, 1.0]]


def test_all_silence_is_an_error_naming_the_speech_found(vad_extractor):
    with pytest.raises(
        ValueError,
        match=r"too little speech: the VAD EnergyVAD\(smoothing=11, silence_rms=1\) found 0 speech frames "
        r"\(0.00 s of speech in 2.00 s of audio\); the network needs at least 37 frames \(0.37 s\) of speech. "
        r"Use vad=None to embed the whole recording",
    ):
        vad_extractor((16000, numpy.zeros(32000, dtype=numpy.int16)))


def test_too_little_speech_is_an_error(vad_extractor):
    rate, samples = speech("librivox_0880")
    short = numpy.concatenate([numpy.zeros(2 * rate, samples.dtype), samples[4000:6400], numpy.zeros(rate, samples.dtype)])
    with pytest.raises(ValueError, match=r"too little speech: .* found \d+ speech frames \(0\.\d\d s of speech in 3.15 s"):
        vad_extractor((rate, short))


def test_without_vad_the_extractor_is_unchanged(extractor):
    assert extractor.vad is None
    with pytest.raises(ValueError, match=r"this extractor has no VAD: create it with vad='energy'"):
        extractor.voice_activity(speech("librivox_0880"))


# -- the rows of doc/robustness.rst on voice activity, windows and segments -------------------

ROBUSTNESS = REPO / "doc" / "robustness.rst"
SECTION = "Voice activity, windows and segments"


def robustness_rows():
    """(case, outcome, message) of the page's table under :data:`SECTION`, header excluded."""
    text = ROBUSTNESS.read_text().split(SECTION, 1)[1].split(".. list-table::", 1)[1]
    text = text.split("\n\n\n", 1)[0].split("\nWhat never happens", 1)[0]
    cells = re.findall(r"^   [* ] - (.*)$", text, flags=re.MULTILINE)
    return [tuple(cells[i : i + 3]) for i in range(0, len(cells), 3)][1:]


def _segments_file_cli(tmp_path):
    from click.testing import CliRunner

    from bob.learn.pytorch.script.pytorch import pytorch

    bad = tmp_path / "segments.txt"
    bad.write_text("0 1\n")
    result = CliRunner().invoke(
        pytorch, ["extract-audio", str(SPEECH / "librivox_0880.wav"), "-o", str(tmp_path / "o.csv"), "--segments", str(bad)]
    )
    return result.exit_code, result.stderr


def robustness_cases(extractor, vad_extractor, tmp_path, monkeypatch):
    rate, samples = speech("librivox_0880")
    quiet = numpy.concatenate([numpy.zeros(2 * rate, samples.dtype), samples[4000:6400], numpy.zeros(rate, samples.dtype)])

    def without_silero():
        monkeypatch.setitem(sys.modules, "silero_vad", None)
        return EmbeddingExtractor("dltresnet34", test=True, vad="silero")

    return {
        "all-silence recording": lambda: vad_extractor((16000, numpy.zeros(32000, numpy.int16))),
        "recording with less than 37 frames": lambda: vad_extractor((rate, quiet)),
        "unknown VAD name": lambda: EmbeddingExtractor("dltresnet34", test=True, vad="webrtc"),
        '``vad="silero"`` without': without_silero,
        "speech labels other than 0 and 1": lambda: extractor.embed_speech((rate, samples), labels=[0, 1, 2]),
        "a VAD callable returning": lambda: EmbeddingExtractor("dltresnet34", test=True, vad=lambda a: None)((rate, samples)),
        "window shorter than": lambda: extractor.embed_windows((rate, samples), 0.3, 0.1),
        "``step`` of zero": lambda: extractor.embed_windows((rate, samples), 1.0, -1.0),
        "recording shorter than one window": lambda: extractor.embed_windows((rate, samples), 5.0, 1.0),
        "segment ending after": lambda: extractor.embed_segments((rate, samples), [(1.0, 3.5)]),
        "segment with ``end <= start``": lambda: extractor.embed_segments((rate, samples), [(1.0, 1.0)]),
        "segments file other than": lambda: _segments_file_cli(tmp_path),
    }


def test_robustness_rows_on_voice_activity_windows_and_segments(extractor, vad_extractor, tmp_path, monkeypatch):
    rows = robustness_rows()
    assert len(rows) == 12
    known = robustness_cases(extractor, vad_extractor, tmp_path, monkeypatch)
    for described, outcome, message in rows:
        call = next((action for prefix, action in known.items() if described.startswith(prefix)), None)
        assert call is not None, f"no test case for documented row {described!r}"
        if outcome.startswith("exit status"):
            status, stderr = call()
            assert status == int(outcome.split()[-1]) and message in " ".join(stderr.split()), described
            continue
        kind = {"``ValueError``": ValueError, "``TypeError``": TypeError, "``ImportError``": ImportError}[outcome]
        with pytest.raises(kind) as error:
            call()
        assert message in str(error.value), described
