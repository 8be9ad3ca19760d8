"""recordings_database with a normalisation cohort: the lists it writes, and bob's score-normalisation runs on them.

The pipeline runs use the bundled recordings and a reference checkpoint of
random weights: they check the plumbing (files read, every trial scored,
S-norm computed as defined), not the quality of the scores.
"""
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import scipy.io.wavfile

from bob.learn.pytorch.database import read_speakers, recordings_database, write_csv_protocol

from .conftest import SPEECH

BOB = Path(sys.executable).with_name("bob")
SPEAKERS = read_speakers(SPEECH / "speakers.csv")
COHORT = ("flite_rms", "librivox_ss01_reader")
MODEL_KEY = "bob.learn.pytorch.extractor.audio.drn_modelpath"


@pytest.fixture
def recordings(tmp_path) -> Path:
    folder = tmp_path / "recordings"
    folder.mkdir()
    for name in SPEAKERS:
        shutil.copy(SPEECH / name, folder / name)
    return folder


def test_cohort_speakers_are_listed_for_z_and_t_norm_and_left_out_of_the_trials(recordings, tmp_path):
    write_csv_protocol(recordings, tmp_path / "protocols", SPEECH / "speakers.csv", cohort_speakers=COHORT)
    train = tmp_path / "protocols" / "default" / "train"
    expected = (
        "path,subject_id,template_id\n"
        "flite_rms_u1,flite_rms,flite_rms_u1\nflite_rms_u2,flite_rms,flite_rms_u2\nflite_rms_u3,flite_rms,flite_rms_u3\n"
        "librivox_0880,librivox_ss01_reader,librivox_0880\nlibrivox_0930,librivox_ss01_reader,librivox_0930\n"
    )
    assert (train / "for_znorm.csv").read_text() == expected
    assert (train / "for_tnorm.csv").read_text() == expected
    dev = tmp_path / "protocols" / "default" / "dev"
    listed = (dev / "for_enrolling.csv").read_text() + (dev / "for_probing.csv").read_text()
    assert "flite_rms" not in listed and "librivox" not in listed
    assert listed.count("\n") == 2 + 4 * 3


def test_without_a_cohort_no_normalisation_list_is_written(recordings, tmp_path):
    write_csv_protocol(recordings, tmp_path / "protocols", SPEECH / "speakers.csv")
    assert not (tmp_path / "protocols" / "default" / "train").exists()


@pytest.mark.parametrize(
    "cohort, error, message",
    [
        (("nobody", "flite_rms"), ValueError, r"cohort speakers 'nobody' have no recording in .*recordings"),
        ("flite_rms", TypeError, "cohort_speakers must be a list of speaker names, got the string 'flite_rms'"),
        (tuple(sorted(set(SPEAKERS.values()))), ValueError, "no recording of .* is left for probing"),
    ],
)
def test_bad_cohorts_are_refused_before_anything_is_written(recordings, tmp_path, cohort, error, message):
    with pytest.raises(error, match=message):
        write_csv_protocol(recordings, tmp_path / "protocols", SPEECH / "speakers.csv", cohort_speakers=cohort)
    assert not (tmp_path / "protocols").exists()


def database_config(recordings: Path, tmp_path: Path) -> Path:
    config = tmp_path / "database.py"
    config.write_text(
        "from bob.learn.pytorch.database import recordings_database\n\n"
        f"database = recordings_database({str(recordings)!r}, {str(tmp_path / 'protocols')!r}, "
        f"{str(SPEECH / 'speakers.csv')!r}, cohort_speakers={COHORT!r})\n"
    )
    return config


def read_scores(path: Path) -> dict:
    with open(path, newline="") as handle:
        return {(row["bio_ref_template_id"], row["probe_template_id"]): float(row["score"])
                for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def embeddings(drn_extractor) -> dict:
    """``{stem: (128,) float64}`` of every bundled recording, as the pipeline's transformer computes them."""
    return {Path(name).stem: drn_extractor(scipy.io.wavfile.read(SPEECH / name))[0].astype(numpy.float64)
            for name in SPEAKERS}


def cosine(a, b) -> float:
    return float(numpy.dot(a, b) / (numpy.linalg.norm(a) * numpy.linalg.norm(b)))


@pytest.mark.parametrize("kind", ["znorm", "tnorm"])
def test_bob_bio_pipeline_score_norm_reads_the_cohort(recordings, tmp_path, drn_file, kind):
    subprocess.run([str(BOB), "config", "set", MODEL_KEY, str(drn_file)], cwd=tmp_path, check=True, timeout=120)
    command = [BOB, "bio", "pipeline", "score-norm", "-p", "dltresnet34-voxceleb", "-d",
               database_config(recordings, tmp_path), "-o", "out", "--no-dask", "-m",
               "--score-normalization-type", kind]
    result = subprocess.run([str(part) for part in command], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    raw = read_scores(tmp_path / "out" / "scores-dev" / "raw_scores.csv")
    normalised = read_scores(tmp_path / "out" / "scores-dev" / f"{kind}.csv")
    assert set(raw) == set(normalised) and len(raw) == 4 * 8
    assert not any("flite_rms" in model or "librivox" in probe for model, probe in raw)
    assert all(numpy.isfinite(list(normalised.values())))


@pytest.mark.parametrize("top_n", [None, 3])
def test_s_norm_runs_on_the_database_and_equals_the_definition(recordings, tmp_path, drn_extractor, embeddings,
                                                              top_n):
    from bob.learn.pytorch.config.audio import cosine_pipeline
    from bob.learn.pytorch.scoring import run_pipeline_s_norm, s_norm

    database = recordings_database(recordings, tmp_path / "protocols", SPEECH / "speakers.csv", cohort_speakers=COHORT)
    _, pipeline = cosine_pipeline(drn_extractor)
    raw_file, normalised_file = run_pipeline_s_norm(pipeline, database, tmp_path / "out", top_n=top_n)
    assert normalised_file.name == ("as-norm.csv" if top_n else "s-norm.csv")
    raw, normalised = read_scores(raw_file), read_scores(normalised_file)
    models = sorted({model for model, _ in raw})
    probes = sorted({probe for _, probe in raw})
    cohort = sorted(name for name in embeddings if name.startswith(("flite_rms", "librivox")))
    enrolment = {model: embeddings[f"{model}_u1"] for model in models}  # one enrolment file per speaker
    expected = s_norm(
        [[cosine(enrolment[m], embeddings[p]) for p in probes] for m in models],
        [[cosine(enrolment[m], embeddings[c]) for c in cohort] for m in models],
        [[cosine(embeddings[p], embeddings[c]) for c in cohort] for p in probes],
        top_n=top_n,
    )
    found = [[normalised[m, p] for p in probes] for m in models]
    numpy.testing.assert_allclose(found, expected, rtol=0, atol=1e-4)
    metrics = subprocess.run([str(BOB), "bio", "metrics", str(normalised_file)], capture_output=True, text=True,
                             timeout=300)
    assert metrics.returncode == 0, metrics.stderr[-2000:]
