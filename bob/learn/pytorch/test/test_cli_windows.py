"""``bob pytorch extract-audio --vad / --window --step / --segments``: rows, times and labels in every format."""
import csv

import h5py
import numpy
import pytest
import scipy.io.wavfile
from click.testing import CliRunner

from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor
from bob.learn.pytorch.regions import read_segments
from bob.learn.pytorch.script.pytorch import pytorch

from .conftest import SPEECH

ATOL = 1e-5  # the CSV holds 9 significant digits
RECORDING = "librivox_0930"


def run(*args):
    return CliRunner().invoke(pytorch, [str(arg) for arg in args], catch_exceptions=False)


def audio(name=RECORDING):
    return scipy.io.wavfile.read(SPEECH / f"{name}.wav")


@pytest.fixture(scope="module")
def extractor(drn_file):
    return EmbeddingExtractor("dltresnet34", drn_file)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def embedding_columns(rows):
    return numpy.array([[float(row[f"e{i}"]) for i in range(128)] for row in rows])


def test_windows_csv_has_start_and_end_columns(tmp_path, drn_file, extractor):
    output = tmp_path / "windows.csv"
    result = run("extract-audio", SPEECH / f"{RECORDING}.wav", "-o", output, "-m", drn_file, "--window", 1.5, "--step", 0.75)
    assert result.exit_code == 0, result.output
    rows = read_rows(output)
    assert list(rows[0])[:4] == ["name", "chunk", "start", "end"]
    expected, times = extractor.embed_windows(audio(), 1.5, 0.75)
    assert [(row["name"], row["chunk"], row["start"], row["end"]) for row in rows] == [
        (RECORDING, str(i), f"{s:.6f}", f"{e:.6f}") for i, (s, e) in enumerate(times)
    ]
    assert times.tolist() == [[0.0, 1.5], [0.75, 2.25], [1.5, 3.0]]
    numpy.testing.assert_allclose(embedding_columns(rows), expected, rtol=0, atol=ATOL)


def test_windows_hdf5_and_npy_carry_times(tmp_path, drn_file, extractor):
    expected, times = extractor.embed_windows(audio(), 2.0, 0.5)
    hdf5, npy = tmp_path / "w.h5", tmp_path / "w.npy"
    for output in (hdf5, npy):
        result = run("extract-audio", SPEECH / f"{RECORDING}.wav", "-o", output, "-m", drn_file, "--window", 2, "--step", 0.5)
        assert result.exit_code == 0, result.output
    with h5py.File(hdf5, "r") as handle:
        dataset = handle[RECORDING]
        numpy.testing.assert_allclose(dataset[()], expected, rtol=0, atol=ATOL)
        numpy.testing.assert_array_equal(dataset.attrs["start"], times[:, 0])
        numpy.testing.assert_array_equal(dataset.attrs["end"], times[:, 1])
        assert handle.attrs["window_s"] == 2.0 and handle.attrs["step_s"] == 0.5
    records = numpy.load(npy)
    numpy.testing.assert_allclose(records["embedding"], expected, rtol=0, atol=ATOL)
    assert records["chunk"].tolist() == list(range(len(times)))
    numpy.testing.assert_array_equal(numpy.stack([records["start"], records["end"]], axis=1), times)


def test_rttm_segments_pooled_by_speaker(tmp_path, drn_file, extractor):
    rttm = tmp_path / "talk.rttm"
    rttm.write_text(
        f"SPEAKER {RECORDING} 1 0.00 1.20 <NA> <NA> alice <NA> <NA>\n"
        f"SPEAKER {RECORDING} 1 1.20 0.90 <NA> <NA> bob <NA> <NA>\n"
        f"SPEAKER {RECORDING} 1 2.10 1.19 <NA> <NA> alice <NA> <NA>\n"
        "SPEAKER other 1 0.00 1.00 <NA> <NA> carol <NA> <NA>\n"
    )
    segments = [(0.0, 1.2), (1.2, 2.1), (2.1, 3.29)]
    rows = extractor.embed_segments(audio(), segments)

    output = tmp_path / "segments.csv"
    result = run("extract-audio", SPEECH / f"{RECORDING}.wav", "-o", output, "-m", drn_file, "--segments", rttm)
    assert result.exit_code == 0, result.output
    found = read_rows(output)
    assert [(row["start"], row["end"], row["label"]) for row in found] == [
        ("0.000000", "1.200000", "alice"), ("1.200000", "2.100000", "bob"), ("2.100000", "3.290000", "alice")
    ]
    numpy.testing.assert_allclose(embedding_columns(found), rows, rtol=0, atol=ATOL)

    pooled = tmp_path / "speakers.h5"
    result = run("extract-audio", SPEECH / f"{RECORDING}.wav", "-o", pooled, "-m", drn_file, "--segments", rttm, "--pool-labels")
    assert result.exit_code == 0, result.output
    mean = rows[[0, 2]].astype(numpy.float64).mean(axis=0)
    with h5py.File(pooled, "r") as handle:
        dataset = handle[RECORDING]
        assert list(dataset.attrs["labels"]) == ["alice", "bob"]
        numpy.testing.assert_allclose(dataset[0], mean / numpy.linalg.norm(mean), rtol=0, atol=ATOL)
        numpy.testing.assert_allclose(dataset[1], rows[1], rtol=0, atol=ATOL)
        numpy.testing.assert_array_equal(dataset.attrs["start"], [0.0, 1.2])
        numpy.testing.assert_array_equal(dataset.attrs["end"], [3.29, 2.1])


def test_csv_segments_apply_to_every_recording(tmp_path, drn_file, extractor):
    table = tmp_path / "segments.csv"
    table.write_text("start,end\n0.5,1.5\n1.0,2.5\n")
    output = tmp_path / "out.npy"
    names = ["flite_kal_u1", "librivox_0880"]
    result = run("extract-audio", *[SPEECH / f"{n}.wav" for n in names], "-o", output, "-m", drn_file, "--segments", table)
    assert result.exit_code == 0, result.output
    expected = numpy.vstack([extractor.embed_segments(audio(n), [(0.5, 1.5), (1.0, 2.5)]) for n in names])
    records = numpy.load(output)
    numpy.testing.assert_allclose(records["embedding"], expected, rtol=0, atol=ATOL)
    assert [(str(name), start, end) for name, start, end in records[["name", "start", "end"]].tolist()] == [
        (n, s, e) for n in names for s, e in ((0.5, 1.5), (1.0, 2.5))
    ]


def test_vad_embeds_the_speech(tmp_path, drn_file):
    output = tmp_path / "speech.h5"
    result = run("extract-audio", SPEECH / f"{RECORDING}.wav", "-o", output, "-m", drn_file, "--vad", "energy")
    assert result.exit_code == 0, result.output
    expected = EmbeddingExtractor("dltresnet34", drn_file, vad="energy")(audio())
    with h5py.File(output, "r") as handle:
        numpy.testing.assert_allclose(handle[RECORDING][()], expected, rtol=0, atol=ATOL)
        assert handle.attrs["vad"] == "energy"


def test_vad_on_silence_reports_the_recording(tmp_path, drn_file):
    silent = tmp_path / "silent.wav"
    scipy.io.wavfile.write(silent, 16000, numpy.zeros(32000, dtype=numpy.int16))
    result = run("extract-audio", silent, SPEECH / f"{RECORDING}.wav", "-o", tmp_path / "o.csv", "-m", drn_file, "--vad", "energy")
    assert result.exit_code == 1
    assert f"error: {silent}: too little speech: the VAD EnergyVAD(smoothing=11, silence_rms=1) found 0 speech frames" in result.stderr
    assert len(read_rows(tmp_path / "o.csv")) == 1


def test_a_segment_beyond_the_recording_is_reported(tmp_path, drn_file):
    table = tmp_path / "segments.csv"
    table.write_text("start,end,file\n0.0,1.0,flite_kal_u1\n0.5,9.0,flite_kal_u1\n")
    result = run("extract-audio", SPEECH / "flite_kal_u1.wav", "-o", tmp_path / "o.csv", "-m", drn_file, "--segments", table)
    assert result.exit_code == 1
    assert "segment 1: ends at 9 s, after the end of the recording (3.237 s)" in result.stderr
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--window", "1"], "--window and --step go together"),
        (["--window", "1", "--step", "1", "--segments", "{table}"], "--window and --segments exclude each other"),
        (["--pool-labels"], "--pool-labels pools the rows of --segments by label"),
        (["--vad", "energy", "-L", "100"], "--chunk-length does not combine with --vad"),
        (["--window", "1", "--step", "1", "-L", "100"], "--chunk-length does not combine with --window"),
        (["--vad", "energy", "--window", "1", "--step", "1"], "--vad embeds the speech of whole recordings"),
        (["--window", "0", "--step", "1"], "0.0 is not in the range x>0"),
        (["--segments", "{bad}"], "segments are read from .rttm or .csv files, not '.txt'"),
        (["--segments", "{headless}"], "a segments CSV needs a header with 'start' and 'end'"),
    ],
)
def test_options_that_do_not_combine_are_usage_errors(tmp_path, options, message):
    table, bad, headless = tmp_path / "s.csv", tmp_path / "s.txt", tmp_path / "h.csv"
    table.write_text("start,end\n0,1\n")
    bad.write_text("0 1\n")
    headless.write_text("0,1\n")
    options = [o.format(table=table, bad=bad, headless=headless) for o in options]
    result = run("extract-audio", SPEECH / f"{RECORDING}.wav", "-o", tmp_path / "o.csv", *options)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_read_segments_rttm_and_csv(tmp_path):
    rttm = tmp_path / "a.rttm"
    rttm.write_text("SPKR-INFO a 1 <NA> <NA> <NA> unknown alice <NA> <NA>\nSPEAKER a 1 0.5 1.25 <NA> <NA> alice <NA> <NA>\n")
    assert read_segments(rttm) == {"a": [(0.5, 1.75, "alice")]}
    table = tmp_path / "b.csv"
    table.write_text("file,start,end,label\nx,0,1,s1\nx,1,2.5,\n")
    assert read_segments(table) == {"x": [(0.0, 1.0, "s1"), (1.0, 2.5, None)]}
    broken = tmp_path / "c.rttm"
    broken.write_text("SPEAKER a 1 zero 1.0 <NA> <NA> alice\n")
    with pytest.raises(ValueError, match=r"c.rttm, line 1: onset 'zero' is not a number of seconds"):
        read_segments(broken)
