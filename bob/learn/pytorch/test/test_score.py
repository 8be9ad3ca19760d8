"""``bob pytorch score`` and ``bob pytorch calibrate``: formats, numbers, refusals, ``bob bio metrics`` on the output.

The numbers are checked on synthetic embeddings against independent loops;
the run on the package's recordings checks the plumbing only (a reference
checkpoint of random weights makes meaningless scores).
"""
import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from click.testing import CliRunner

from bob.learn.pytorch.scoring import s_norm
from bob.learn.pytorch import outputs
from bob.learn.pytorch.inputs import AudioInput, Embedded
from bob.learn.pytorch.script.pytorch import pytorch

from .conftest import SPEECH

BOB = Path(sys.executable).with_name("bob")
HEADER = ["probe_template_id", "probe_subject_id", "bio_ref_template_id", "bio_ref_subject_id", "score",
          "network", "model_sha256", "norm", "cohort_size", "top_n"]


def invoke(*args):
    return CliRunner().invoke(pytorch, [str(arg) for arg in args], catch_exceptions=False)


def embedded(name: str, rows: numpy.ndarray) -> Embedded:
    return Embedded(AudioInput(name, Path(f"/recordings/{name}.wav")), rows.astype(numpy.float32),
                            16000, 16000)


@pytest.fixture(scope="module")
def synthetic():
    """Rows of 4 speakers x 3 recordings (2 chunks each) and a cohort of 25, drawn from a known model."""
    rng = numpy.random.default_rng(3)
    centres = rng.standard_normal((4, 12))
    rows = {f"s{s}/r{r}": centres[s] + 0.9 * rng.standard_normal((2, 12)) for s in range(4) for r in range(3)}
    cohort = {f"c{i:02d}": rng.standard_normal((1, 12)) for i in range(25)}
    return rows, cohort


def write(rows: dict, path: Path, network: str = "dltresnet34") -> Path:
    results = [embedded(name, values) for name, values in rows.items()]
    outputs.write_output(results, path, {"network": network, "model_file": "/absent/model.pth.tar"})
    return path


def unit(vector):
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def loop_template(rows) -> list:
    """Mean of the L2-normalised float32 rows, renormalised (the stated enrolment rule)."""
    normalised = [unit([float(x) for x in row]) for row in numpy.asarray(rows, numpy.float32)]
    return unit([sum(column) / len(normalised) for column in zip(*normalised)])


def loop_cosine(a, b) -> float:
    return sum(x * y for x, y in zip(unit(a), unit(b)))


def read_rows(path: Path) -> list:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def trial_file(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "trials.txt"
    path.write_text("# enrolment probe label\n" + "\n".join(lines) + "\n")
    return path


LABELLED = ["s0/r0 s0/r1 target", "s0/r0 s1/r2 nontarget", "s1/r0 s1/r1 target", "s1/r0 s2/r0 nontarget",
            "s2/r1 s2/r2 target", "s3/r0 s2/r2 nontarget", "s3/r0 s3/r2 target", "s2/r1 s3/r1 nontarget"]


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".csv"])
def test_scores_of_each_extract_audio_format_match_loop_cosines(synthetic, tmp_path, suffix):
    rows, _ = synthetic
    embeddings = write(rows, tmp_path / f"embeddings{suffix}")
    result = invoke("score", embeddings, "--trials", trial_file(tmp_path, LABELLED), "-o", tmp_path / "scores.csv")
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote 8 scores (none) to {tmp_path / 'scores.csv'}\n"
    written = read_rows(tmp_path / "scores.csv")
    assert list(written[0]) == HEADER
    for line, row in zip(LABELLED, written):
        enrolment, probe, label = line.split()
        assert (row["bio_ref_template_id"], row["probe_template_id"]) == (enrolment, probe)
        assert (row["probe_subject_id"] == row["bio_ref_subject_id"]) == (label == "target")
        expected = loop_cosine(loop_template(rows[enrolment]), loop_template(rows[probe]))
        assert float(row["score"]) == pytest.approx(expected, abs=1e-7)  # float32 storage, 10 digits written
        assert (row["norm"], row["cohort_size"], row["top_n"]) == ("none", "", "")
        assert row["network"] == ("dltresnet34" if suffix == ".h5" else "")


def test_all_against_all_takes_speakers_from_the_key_folders(synthetic, tmp_path):
    rows, _ = synthetic
    result = invoke("score", write(rows, tmp_path / "e.h5"), "-o", tmp_path / "scores.csv")
    assert result.exit_code == 0, result.output
    written = read_rows(tmp_path / "scores.csv")
    assert len(written) == 12 * 11 // 2
    targets = [row for row in written if row["probe_subject_id"] == row["bio_ref_subject_id"]]
    assert len(targets) == 4 * 3 and all(row["probe_template_id"][:2] == row["bio_ref_template_id"][:2] for row in targets)


@pytest.mark.parametrize("norm, top_n", [("s-norm", None), ("as-norm", 7)])
def test_normalised_scores_equal_s_norm_of_loop_cohort_scores(synthetic, tmp_path, norm, top_n):
    rows, cohort = synthetic
    embeddings, cohort_file = write(rows, tmp_path / "e.h5"), write(cohort, tmp_path / "cohort.h5")
    options = ["--norm", norm, "--cohort", cohort_file] + (["--top-n", top_n] if top_n else [])
    result = invoke("score", embeddings, "-t", trial_file(tmp_path, LABELLED), "-o", tmp_path / "s.csv", *options)
    assert result.exit_code == 0, result.output
    written = read_rows(tmp_path / "s.csv")
    cohort_vectors = [loop_template(values) for values in cohort.values()]
    for line, row in zip(LABELLED, written):
        enrolment, probe = (loop_template(rows[key]) for key in line.split()[:2])
        expected = s_norm([[loop_cosine(enrolment, probe)]], [[loop_cosine(enrolment, c) for c in cohort_vectors]],
                          [[loop_cosine(probe, c) for c in cohort_vectors]], top_n=top_n)[0, 0]
        assert float(row["score"]) == pytest.approx(expected, abs=1e-7)
        assert (row["norm"], row["cohort_size"], row["top_n"]) == (norm, "25", str(top_n or ""))


def test_bob_bio_metrics_reads_the_score_file(synthetic, tmp_path):
    rows, _ = synthetic
    invoke("score", write(rows, tmp_path / "e.h5"), "-t", trial_file(tmp_path, LABELLED), "-o", tmp_path / "s.csv")
    result = subprocess.run([str(BOB), "bio", "metrics", "s.csv"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "False Non Match Rate" in result.stdout and "/4)" in result.stdout, result.stdout


def test_calibrate_then_score_with_the_calibration_writes_llrs(synthetic, tmp_path):
    rows, cohort = synthetic
    embeddings, cohort_file = write(rows, tmp_path / "e.h5"), write(cohort, tmp_path / "cohort.h5")
    normalised = ["--norm", "s-norm", "--cohort", cohort_file]
    assert invoke("score", embeddings, "-o", tmp_path / "dev.csv", *normalised).exit_code == 0
    result = invoke("calibrate", tmp_path / "dev.csv", "-o", tmp_path / "calibration.json")
    assert result.exit_code == 0, result.output
    assert "fitted on 12 target and 54 non-target trials (prior 0.5, norm s-norm)" in result.output
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    assert calibration["scores"] == {"network": "dltresnet34", "model_sha256": None, "norm": "s-norm",
                                     "cohort_size": 25, "top_n": None}
    result = invoke("score", embeddings, "-o", tmp_path / "llr.csv", *normalised,
                    "--calibration", tmp_path / "calibration.json")
    assert result.exit_code == 0, result.output
    raw = [float(row["score"]) for row in read_rows(tmp_path / "dev.csv")]
    llr = [float(row["score"]) for row in read_rows(tmp_path / "llr.csv")]
    numpy.testing.assert_allclose(llr, calibration["slope"] * numpy.array(raw) + calibration["offset"], atol=1e-8)


def test_a_calibration_for_another_normalisation_or_network_is_refused(synthetic, tmp_path):
    rows, cohort = synthetic
    embeddings, cohort_file = write(rows, tmp_path / "e.h5"), write(cohort, tmp_path / "cohort.h5")
    invoke("score", embeddings, "-o", tmp_path / "dev.csv", "--norm", "s-norm", "--cohort", cohort_file)
    invoke("calibrate", tmp_path / "dev.csv", "-o", tmp_path / "c.json")
    result = invoke("score", embeddings, "-o", tmp_path / "llr.csv", "--calibration", tmp_path / "c.json")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tmp_path / 'c.json'}: the calibration was fitted on scores made otherwise; these scores have "
        "normalisation none instead of s-norm; cohort size unknown instead of 25: fit a calibration on scores made "
        "like these (bob pytorch calibrate)\n"
    )
    other = write(rows, tmp_path / "other.h5", network="resnet34")
    other_cohort = write(cohort, tmp_path / "other-cohort.h5", network="resnet34")
    result = invoke("score", other, "-o", tmp_path / "llr.csv", "--norm", "s-norm", "--cohort", other_cohort,
                    "--calibration", tmp_path / "c.json")
    assert result.exit_code == 1
    assert "these scores have network resnet34 instead of dltresnet34:" in result.output
    assert not (tmp_path / "llr.csv").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--norm", "s-norm"], "--norm s-norm needs --cohort FILE"),
        (["--norm", "as-norm", "--cohort", "c.h5"], "--norm as-norm needs --top-n N"),
        (["--norm", "s-norm", "--cohort", "c.h5", "--top-n", "5"], "--top-n is for --norm as-norm"),
        (["--cohort", "c.h5"], "--cohort and --top-n need --norm s-norm or --norm as-norm"),
    ],
)
def test_option_combinations_that_cannot_be_meant_are_usage_errors(tmp_path, options, message):
    result = invoke("score", tmp_path / "e.h5", "-o", tmp_path / "s.csv", *options)
    assert result.exit_code == 2 and message in result.output


def test_trials_naming_unknown_keys_are_refused_before_scoring(synthetic, tmp_path):
    rows, _ = synthetic
    trials = trial_file(tmp_path, ["s0/r0 nobody/x target", "s0/r0 s0/r1 target"])
    result = invoke("score", write(rows, tmp_path / "e.h5"), "-t", trials, "-o", tmp_path / "s.csv")
    assert result.exit_code == 1
    assert result.output == "Error: 1 keys of the trials have no embedding, e.g. nobody/x\n"
    assert not (tmp_path / "s.csv").exists()


def test_score_and_calibrate_on_the_package_recordings(drn_file, tmp_path):
    """Plumbing only: extract-audio's output of the bundled recordings goes through score, calibrate and metrics."""
    assert invoke("extract-audio", SPEECH, "-o", tmp_path / "e.h5", "--model", drn_file, "--backend", "eager",
                  "--quiet").exit_code == 0
    with open(SPEECH / "speakers.csv", newline="") as handle:
        speaker = {Path(row["file"]).stem: row["speaker"] for row in csv.DictReader(handle)}
    keys = sorted(speaker)
    lines = [f"{a} {b} {'target' if speaker[a] == speaker[b] else 'nontarget'}"
             for i, a in enumerate(keys) for b in keys[i + 1 :]]
    trials = trial_file(tmp_path, lines)
    cohort = ["--norm", "as-norm", "--cohort", tmp_path / "e.h5", "--top-n", 5]
    result = invoke("score", tmp_path / "e.h5", "-t", trials, "-o", tmp_path / "s.csv", *cohort)
    assert result.exit_code == 0, result.output
    row = read_rows(tmp_path / "s.csv")[0]
    assert (row["network"], row["cohort_size"]) == ("dltresnet34", "17")
    assert row["model_sha256"] == hashlib.sha256(Path(drn_file).read_bytes()).hexdigest()
    assert invoke("calibrate", tmp_path / "s.csv", "-o", tmp_path / "c.json").exit_code == 0
    result = invoke("score", tmp_path / "e.h5", "-t", trials, "-o", tmp_path / "llr.csv", *cohort,
                    "--calibration", tmp_path / "c.json")
    assert result.exit_code == 0, result.output
    metrics = subprocess.run([str(BOB), "bio", "metrics", "llr.csv"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert metrics.returncode == 0, metrics.stderr
