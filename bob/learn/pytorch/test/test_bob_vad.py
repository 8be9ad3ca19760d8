"""bob with voice activity: speech labels in the samples' annotations, and the ``dltresnet34-voxceleb-vad`` resource.

Embeddings are compared with atol=1e-5, cosine scores with atol=5e-5 (as in test_bob_integration.py).
"""
import csv
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import bob.pipelines
import numpy
import pytest
import scipy.io.wavfile
from scipy.spatial.distance import cosine

from bob.learn.pytorch.annotators import VoiceActivityAnnotator
from bob.learn.pytorch.bob_imports import PipelineSimple
from bob.learn.pytorch.database import read_speakers
from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor
from bob.learn.pytorch.transformers import AudioEmbeddingTransformer
from bob.learn.pytorch.vad import EnergyVAD

from .conftest import SPEECH

BOB = Path(sys.executable).with_name("bob")
DRN_PATH_KEY = "bob.learn.pytorch.extractor.audio.drn_modelpath"
SPEAKERS = read_speakers(SPEECH / "speakers.csv")
ATOL = 1e-5
SCORE_ATOL = 5e-5
#: Frames each end of a recording that the test's own annotator labels as non-speech.
TRIMMED = 25

#: A pipeline whose first step stores speech labels as the samples' annotations, as bob.bio.spear's
#: VAD annotators do (a 0/1 int array, one label per 10 ms frame), here all frames but TRIMMED at each end.
LABELS_PIPELINE = f'''
import numpy
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import make_pipeline
from bob.bio.base.algorithm import Distance
from bob.bio.base.pipelines import PipelineSimple
from bob.pipelines import wrap
from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor
from bob.learn.pytorch.transformers import AudioEmbeddingTransformer


class TrimmingAnnotator(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        return self

    def transform(self, X):
        labels = []
        for rate, samples in X:
            frames = 1 + (len(samples) - 320) // 160
            labels.append(numpy.array([0] * {TRIMMED} + [1] * (frames - {2 * TRIMMED}) + [0] * {TRIMMED}))
        return labels

    def _more_tags(self):
        return {{"requires_fit": False, "stateless": True}}


transformer = make_pipeline(
    wrap(["sample"], TrimmingAnnotator(), output_attribute="annotations"),
    wrap(["sample"], AudioEmbeddingTransformer(EmbeddingExtractor("dltresnet34"), annotations_attribute="annotations")),
)
pipeline = PipelineSimple(transformer, Distance(distance_function="cosine", factor=-1))
'''


def trimmed_labels(samples):
    frames = 1 + (len(samples) - 320) // 160
    return numpy.array([0] * TRIMMED + [1] * (frames - 2 * TRIMMED) + [0] * TRIMMED)


def read_audio(name):
    return scipy.io.wavfile.read(SPEECH / name)


def run(args, cwd):
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def database(tmp_path, drn_file):
    """A database config over a copy of the bundled recordings (one enrolment per speaker); the model set for bob."""
    run([BOB, "config", "set", DRN_PATH_KEY, drn_file], cwd=tmp_path)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for name in SPEAKERS:
        shutil.copy(SPEECH / name, recordings / name)
    config = tmp_path / "database.py"
    config.write_text(
        "from bob.learn.pytorch.database import recordings_database\n\n"
        f"database = recordings_database({str(recordings)!r}, {str(tmp_path / 'protocols')!r}, "
        f"{str(SPEECH / 'speakers.csv')!r}, enroll_per_speaker=1)\n"
    )
    return config, tmp_path / "protocols" / "default" / "dev"


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def expected_scores(embeddings, protocol):
    """``{(model, probe): score}`` as ``Distance(cosine)`` computes them from the given embeddings."""
    models = {}
    for row in read_csv(protocol / "for_enrolling.csv"):
        models.setdefault(row["template_id"], []).append(embeddings[row["path"]])
    probes = read_csv(protocol / "for_probing.csv")
    return {
        (model, row["template_id"]): -cosine(numpy.mean(vectors, axis=0), embeddings[row["path"]])
        for model, vectors in models.items()
        for row in probes
    }


def assert_scores(path, expected):
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    scores = {(row[0], row[2]): float(row[3]) for row in rows}
    assert set(scores) == set(expected)
    numpy.testing.assert_allclose([scores[p] for p in expected], [expected[p] for p in expected], rtol=0, atol=SCORE_ATOL)


# -- the transformer and the annotator --------------------------------------------------------


def test_transformer_embeds_the_speech_frames_its_annotations_label(drn_file):
    extractor = EmbeddingExtractor("dltresnet34", drn_file)
    audios = [read_audio(name) for name in ("flite_kal_u1.wav", "librivox_0880.wav", "fest_ked_u2.wav")]
    labels = [trimmed_labels(audios[0][1]), None, list(trimmed_labels(audios[2][1]))]
    samples = [
        bob.pipelines.Sample(audio, key=str(i), annotations=label) for i, (audio, label) in enumerate(zip(audios, labels))
    ]
    wrapped = bob.pipelines.wrap(["sample"], AudioEmbeddingTransformer(extractor, annotations_attribute="annotations"))
    found = [sample.data for sample in wrapped.transform(samples)]
    numpy.testing.assert_allclose(found[0], extractor.embed_speech(audios[0], labels=labels[0])[0], rtol=0, atol=ATOL)
    numpy.testing.assert_allclose(found[1], extractor(audios[1]), rtol=0, atol=ATOL)
    numpy.testing.assert_allclose(found[2], extractor.embed_speech(audios[2], labels=labels[2])[0], rtol=0, atol=ATOL)
    assert not numpy.allclose(found[0], extractor(audios[0]), atol=1e-3), "the labels must change the embedding"


def test_annotations_that_are_not_labels_are_refused(drn_file):
    transformer = AudioEmbeddingTransformer(EmbeddingExtractor("dltresnet34", drn_file))
    audio = read_audio("flite_kal_u1.wav")
    with pytest.raises(ValueError, match=r"annotations: speech labels must be 0 or 1, got \[3\]"):
        transformer.transform([audio], annotations=[[0, 3, 1]])
    with pytest.raises(ValueError, match=r"audios\[0\]: too little speech: the speech labels found 10 speech frames"):
        transformer.transform([audio], annotations=[[0] * 10 + [1] * 10])


def test_annotator_gives_bob_bio_spears_form_of_labels():
    audio = read_audio("librivox_0880.wav")
    sample = bob.pipelines.Sample(audio, key="x")
    wrapped = bob.pipelines.wrap(["sample"], VoiceActivityAnnotator(), output_attribute="annotations")
    annotated = wrapped.transform([sample])[0]
    assert annotated.data is audio
    assert annotated.annotations.dtype == numpy.uint8
    numpy.testing.assert_array_equal(annotated.annotations, EnergyVAD()(audio).labels)


# -- bob bio pipeline simple ------------------------------------------------------------------


def test_the_vad_resource_is_registered():
    pipelines = {e.name: e for e in entry_points(group="bob.bio.pipeline")}
    configs = {e.name: e for e in entry_points(group="bob.bio.config")}
    assert pipelines["dltresnet34-voxceleb-vad"].value == "bob.learn.pytorch.config.audio.dltresnet34_vad:pipeline"
    assert configs["dltresnet34-voxceleb-vad"].value == "bob.learn.pytorch.config.audio.dltresnet34_vad"


@pytest.mark.slow
def test_pipeline_simple_honours_speech_labels_in_the_annotations(database, drn_file, tmp_path):
    config, protocol = database
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(LABELS_PIPELINE)
    run([BOB, "bio", "pipeline", "simple", "-p", pipeline, "-d", config, "-g", "dev", "-o", "out", "--no-dask", "-m",
         "--write-column-scores"], cwd=tmp_path)
    extractor = EmbeddingExtractor("dltresnet34", drn_file)
    embeddings = {}
    for name in SPEAKERS:
        audio = read_audio(name)
        embeddings[Path(name).stem] = extractor.embed_speech(audio, labels=trimmed_labels(audio[1]))[0][0]
    assert_scores(tmp_path / "out" / "scores-dev", expected_scores(embeddings, protocol))


@pytest.mark.slow
def test_pipeline_simple_vad_resource(database, drn_file, tmp_path):
    config, protocol = database
    run([BOB, "bio", "pipeline", "simple", "-p", "dltresnet34-voxceleb-vad", "-d", config, "-g", "dev", "-o", "out",
         "--no-dask", "-m", "--write-column-scores"], cwd=tmp_path)
    extractor = EmbeddingExtractor("dltresnet34", drn_file, vad="energy")
    embeddings = {Path(name).stem: extractor(read_audio(name))[0] for name in SPEAKERS}
    assert_scores(tmp_path / "out" / "scores-dev", expected_scores(embeddings, protocol))


def test_vad_resource_loads_without_loading_the_network(drn_file, tmp_path, monkeypatch):
    from clapper.config import load

    run([BOB, "config", "set", DRN_PATH_KEY, drn_file], cwd=tmp_path)
    sys.modules.pop("bob.learn.pytorch.config.audio.dltresnet34_vad", None)
    pipeline = load(["dltresnet34-voxceleb-vad"], entry_point_group="bob.bio.pipeline", attribute_name="pipeline")
    sys.modules.pop("bob.learn.pytorch.config.audio.dltresnet34_vad", None)
    assert isinstance(pipeline, PipelineSimple)
    annotate, embed = [step for _, step in pipeline.transformer.steps]
    assert isinstance(annotate.estimator, VoiceActivityAnnotator)
    assert embed.estimator.annotations_attribute == "annotations"
    assert embed.estimator.extractor._pipeline is None
