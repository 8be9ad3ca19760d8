"""bob integration: verify.py-style configs, ``bob bio pipeline simple`` resources, dask, databases.

The configuration modules resolve their model through the user setting,
written here with the real ``bob config set`` into the temporary HOME of each
test. Embeddings are compared with atol=1e-5 (as the golden tests), cosine
scores with atol=5e-5.
"""
import csv
import importlib
import importlib.util
import os
import pickle
import runpy
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path

import bob.pipelines
import numpy
import pytest
import scipy.io.wavfile
import torch
from bob.bio.base.algorithm import Distance
from bob.bio.base.extractor import Extractor
from bob.bio.base.pipelines import PipelineSimple, checkpoint_pipeline_simple, dask_bio_pipeline
from bob.bio.base.transformers import PreprocessorTransformer
from scipy.spatial.distance import cosine
from sklearn.base import clone

from bob.learn.pytorch import io
from bob.learn.pytorch.database import csv_database, read_speakers, recordings_database, write_csv_protocol
from bob.learn.pytorch.extractor import CallableExtractor, identity
from bob.learn.pytorch.extractor.audio import DummyExtractor
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor, ResNetExtractor
from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

from .conftest import SPEECH

BOB = Path(sys.executable).with_name("bob")
CONFIGS = {
    "dltresnet34": ("bob.learn.pytorch.config.audio.dltresnet34", "drn34", "drn_modelpath", DltResNetExtractor),
    "resnet34": ("bob.learn.pytorch.config.audio.resnet34", "rn34", "rn_modelpath", ResNetExtractor),
}
RESOURCES = {"dltresnet34-voxceleb": "dltresnet34", "resnet34-voxceleb": "resnet34"}
KEY_PREFIX = "bob.learn.pytorch.extractor.audio."
SPEAKERS = read_speakers(SPEECH / "speakers.csv")
ATOL = 1e-5
SCORE_ATOL = 5e-5
# The network alone pickles to about 100 MB; a transformer or pipeline without it to a few kB.
MAX_PICKLE_BYTES = 100_000


# -- helpers -------------------------------------------------------------------------------


def bob_env() -> dict:
    """Environment of the ``bob`` subprocesses: the test's isolated HOME, XDG_CONFIG_HOME and BOBRC."""
    return dict(os.environ)


def run(args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env or bob_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def bob_config_set(key: str, value, cwd) -> None:
    """The real ``bob config set``, in the test's temporary HOME."""
    run([BOB, "config", "set", key, value], cwd=cwd)


@pytest.fixture
def config_model(checkpoint, tmp_path):
    """``config_model(name)``: set the model of config ``name`` with ``bob config set``; returns its path."""

    def set_model(name: str) -> Path:
        _, net, key, _ = CONFIGS[name]
        path = checkpoint(net)
        bob_config_set(KEY_PREFIX + key, path, cwd=tmp_path)
        return path

    return set_model


@pytest.fixture
def fresh_config_modules():
    """Forget imported config modules before and after the test (each test has its own settings)."""

    def forget():
        for module, *_ in CONFIGS.values():
            sys.modules.pop(module, None)

    forget()
    yield
    forget()


def read_audio(name: str):
    return scipy.io.wavfile.read(SPEECH / name)


def speech_files() -> list:
    return sorted(SPEAKERS)


@pytest.fixture(scope="module")
def expected_embeddings(drn_extractor, rn_extractor):
    """``expected_embeddings(net)``: ``{stem: float64 (128,)}`` of every bundled file, one ``__call__`` each."""
    extractors = {"drn34": drn_extractor, "rn34": rn_extractor}  # same tensors as checkpoint(net)
    cache = {}

    def compute(net: str) -> dict:
        if net not in cache:
            cache[net] = {
                Path(name).stem: extractors[net](read_audio(name))[0].astype(numpy.float64) for name in speech_files()
            }
        return cache[net]

    return compute


def expected_scores(embeddings: dict, protocol: Path) -> dict:
    """``{(model, probe): score}`` as ``Distance()`` computes them from the single-call embeddings."""
    enroll = read_csv(protocol / "for_enrolling.csv")
    probes = read_csv(protocol / "for_probing.csv")
    models = {}
    for row in enroll:
        models.setdefault(row["template_id"], []).append(embeddings[row["path"]])
    templates = {model: numpy.mean(vectors, axis=0) for model, vectors in models.items()}
    return {
        (model, row["template_id"]): -cosine(template, embeddings[row["path"]])
        for model, template in templates.items()
        for row in probes
    }


def read_csv(path: Path) -> list:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_scores(path: Path) -> dict:
    """Four-column scores ``{(model, probe): score}``, checking that no pair repeats."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    assert all(len(row) == 4 for row in rows), rows[:3]
    pairs = Counter((row[0], row[2]) for row in rows)
    assert max(pairs.values()) == 1, [pair for pair, count in pairs.items() if count > 1]
    return {(row[0], row[2]): float(row[3]) for row in rows}


def read_csv_scores(path: Path) -> dict:
    """bob's default CSV scores (with the samples' metadata) as ``{(model, probe): score}``."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    pairs = Counter((row["bio_ref_template_id"], row["probe_template_id"]) for row in rows)
    assert max(pairs.values()) == 1, [pair for pair, count in pairs.items() if count > 1]
    return {(row["bio_ref_template_id"], row["probe_template_id"]): float(row["score"]) for row in rows}


def assert_scores(path: Path, expected: dict, reader=read_scores) -> dict:
    scores = reader(path)
    assert set(scores) == set(expected), "score file must hold every probe against every model"
    values = numpy.array([scores[pair] for pair in expected])
    assert numpy.all(numpy.isfinite(values))
    numpy.testing.assert_allclose(values, [expected[pair] for pair in expected], rtol=0, atol=SCORE_ATOL)
    return scores


@pytest.fixture
def speech_database(tmp_path):
    """A database config file over a copy of the bundled recordings: ``make(enroll_per_speaker)``."""

    def make(enroll_per_speaker: int) -> tuple:
        recordings = tmp_path / "recordings"
        recordings.mkdir()
        for name in speech_files():
            shutil.copy(SPEECH / name, recordings / name)
        protocols = tmp_path / "protocols"
        config = tmp_path / "database.py"
        config.write_text(
            "from bob.learn.pytorch.database import recordings_database\n\n"
            f"database = recordings_database({str(recordings)!r}, {str(protocols)!r}, "
            f"{str(SPEECH / 'speakers.csv')!r}, enroll_per_speaker={enroll_per_speaker})\n"
        )
        return config, protocols / "default" / "dev"

    return make


# -- verify.py contract --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_executed_like_verify_py_defines_the_legacy_variables(name, config_model, fresh_config_modules):
    module, _, _, kind = CONFIGS[name]
    model = config_model(name)
    variables = runpy.run_path(importlib.util.find_spec(module).origin)

    preprocessor = variables["preprocessor"]
    assert type(preprocessor) is kind
    assert preprocessor.model_path == str(model)
    assert preprocessor._pipeline is None, "loading a config must not load the network"
    assert isinstance(variables["extractor"], Extractor)
    assert variables["extracted_directory"] == "preprocessed"
    assert variables["skip_extraction"] is True
    assert isinstance(variables["pipeline"], PipelineSimple)
    assert variables["pipeline"].transformer is variables["transformer"]
    assert isinstance(variables["pipeline"].biometric_algorithm, Distance)
    assert variables["pipeline"].biometric_algorithm.distance_function == "cosine"


def test_verify_py_sequence_returns_the_embedding_unchanged(
    config_model, fresh_config_modules, drn_extractor, tmp_path
):
    config_model("dltresnet34")
    config = importlib.import_module("bob.learn.pytorch.config.audio.dltresnet34")
    preprocessor, extractor = config.preprocessor, config.extractor
    audio = read_audio("flite_kal_u1.wav")

    embedding = preprocessor(audio, None)  # verify.py passed the annotations positionally
    preprocessed = tmp_path / "preprocessed" / "flite_kal_u1.hdf5"
    preprocessor.write_data(embedding, preprocessed)
    data = preprocessor.read_data(preprocessed)
    feature = extractor(data)

    assert preprocessor.model_path == drn_extractor.model_path
    reference = drn_extractor(audio)
    numpy.testing.assert_allclose(embedding, reference, rtol=0, atol=ATOL)
    assert feature.dtype == numpy.float64 and feature.shape == (1, 128)
    numpy.testing.assert_array_equal(feature, embedding.astype(numpy.float64))
    # skip_extraction: the algorithm reads the preprocessed files as features
    numpy.testing.assert_array_equal(extractor.read_feature(preprocessed), feature)


@pytest.mark.parametrize("make", [DummyExtractor, lambda: CallableExtractor(identity)], ids=["dummy", "callable"])
def test_pass_through_extractors(make, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the legacy base class's DeprecationWarning is silenced
        extractor = make()
    assert isinstance(extractor, Extractor)
    data = numpy.arange(128, dtype=numpy.float64).reshape(1, 128)
    assert extractor(data) is data
    path = tmp_path / "feature.hdf5"
    extractor.write_feature(numpy.float32(data), path)
    stored = io.read_embedding(path)
    assert stored.dtype == numpy.float64
    numpy.testing.assert_array_equal(extractor.read_feature(path), data)
    numpy.testing.assert_array_equal(pickle.loads(pickle.dumps(extractor))(data), data)


def test_callable_extractor_is_the_package_s_own_on_bob_bio_base_8():
    assert CallableExtractor.__module__ == "bob.learn.pytorch.extractor.CallableExtractor"
    assert CallableExtractor(numpy.negative)(numpy.ones(2)).tolist() == [-1.0, -1.0]


# -- entry points --------------------------------------------------------------------------


@pytest.mark.parametrize("resource", sorted(RESOURCES))
def test_entry_points_name_the_config_objects(resource, config_model, fresh_config_modules):
    name = RESOURCES[resource]
    module, _, _, kind = CONFIGS[name]
    config_model(name)
    groups = {
        group: {e.name: e for e in entry_points(group=group)}
        for group in ("bob.bio.pipeline", "bob.bio.config", "bob.bio.preprocessor")
    }
    assert groups["bob.bio.config"][resource].value == module
    assert isinstance(groups["bob.bio.pipeline"][resource].load(), PipelineSimple)
    assert type(groups["bob.bio.preprocessor"][resource].load()) is kind


def test_bob_loads_the_pipeline_resource_like_bob_bio_pipeline_simple(config_model, fresh_config_modules):
    from clapper.config import load

    config_model("dltresnet34")
    pipeline = load(["dltresnet34-voxceleb"], entry_point_group="bob.bio.pipeline", attribute_name="pipeline")
    assert isinstance(pipeline, PipelineSimple)
    assert pipeline.transformer.steps[0][1].estimator.extractor._pipeline is None


def test_resources_resolve_in_a_fresh_interpreter(tmp_path):
    """The installed package, as bob's console script sees it (no source folder on sys.path)."""
    code = (  # how clapper turns a resource name into the config file it executes
        "import importlib.util\n"
        "from importlib.metadata import entry_points\n"
        "for entry in entry_points(group='bob.bio.pipeline'):\n"
        "    if entry.name.endswith('-voxceleb'):\n"
        "        print(entry.name, importlib.util.find_spec(entry.module).origin)\n"
    )
    env = bob_env()
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        "bob cannot find the config modules of the installed package; an editable install needs "
        "'pip install -e . --config-settings editable_mode=compat':\n" + result.stderr[-2000:]
    )
    origins = dict(line.split() for line in result.stdout.splitlines())
    for resource, name in RESOURCES.items():
        assert origins[resource] == importlib.util.find_spec(CONFIGS[name][0]).origin


# -- the transformer -----------------------------------------------------------------------


def test_transformer_embeds_like_the_extractor(drn_extractor):
    names = ["flite_kal_u1.wav", "fest_ked_u2.wav", "librivox_0880.wav"]
    audios = [read_audio(name) for name in names]
    embeddings = AudioEmbeddingTransformer(drn_extractor, batch_size=2).transform(audios)
    assert len(embeddings) == 3
    for audio, embedding in zip(audios, embeddings):
        assert embedding.shape == (1, 128) and embedding.dtype == numpy.float32
        numpy.testing.assert_allclose(embedding, drn_extractor(audio), rtol=0, atol=ATOL)
    assert AudioEmbeddingTransformer(drn_extractor).transform([]) == []


def test_transformer_makes_one_embed_many_call(drn_extractor, monkeypatch):
    calls = []
    original = DltResNetExtractor.embed_many

    def spy(self, audios, batch_size=8):
        calls.append((len(audios), batch_size))
        return original(self, audios, batch_size=batch_size)

    monkeypatch.setattr(DltResNetExtractor, "embed_many", spy)
    samples = [bob.pipelines.Sample(read_audio(name), key=name) for name in ["flite_kal_u1.wav", "flite_kal_u2.wav"]]
    wrapped = bob.pipelines.wrap(["sample"], AudioEmbeddingTransformer(drn_extractor, batch_size=3))
    outputs = wrapped.transform(samples)
    assert [o.data.shape for o in outputs] == [(1, 128), (1, 128)]
    assert calls == [(2, 3)]


def test_samples_with_a_rate_attribute(drn_extractor):
    rate, data = read_audio("flite_awb_u1.wav")
    with_pair = bob.pipelines.wrap(["sample"], AudioEmbeddingTransformer(drn_extractor))
    with_rate = bob.pipelines.wrap(["sample"], AudioEmbeddingTransformer(drn_extractor, rate_attribute="rate"))
    pair = with_pair.transform([bob.pipelines.Sample((rate, data), key="a")])[0].data
    separate = with_rate.transform([bob.pipelines.Sample(data, rate=rate, key="a")])[0].data
    numpy.testing.assert_array_equal(pair, separate)

    with pytest.raises(TypeError, match="rate_attribute='rate'"):
        with_pair.transform([bob.pipelines.Sample(data, rate=rate, key="a")])[0].data
    with pytest.raises(ValueError, match="2 recordings but 1 rates"):
        AudioEmbeddingTransformer(drn_extractor).transform([data, data], rate=[rate])
    with pytest.raises(TypeError, match=r"^recording 0 is a \(rate, samples\) pair, but rates are also given"):
        with_rate.transform([bob.pipelines.Sample((rate, data), rate=rate, key="a")])[0].data
    expected = r"^rate must be a list \(or other iterable\) of sampling rates, one per recording, got int$"
    with pytest.raises(TypeError, match=expected):
        AudioEmbeddingTransformer(drn_extractor).transform([data], rate=16000)
    with pytest.raises(TypeError, match=r"^X must be a list \(or other iterable\) of recordings, got NoneType$"):
        AudioEmbeddingTransformer(drn_extractor).transform(None)


def test_transformer_tags_and_sklearn_contract(drn_extractor, tmp_path):
    transformer = AudioEmbeddingTransformer(drn_extractor, batch_size=4)
    tags = transformer._get_tags()
    assert tags["requires_fit"] is False and tags["stateless"] is True
    assert not bob.pipelines.estimator_requires_fit(bob.pipelines.wrap(["sample"], transformer))
    assert transformer.fit(["anything"]) is transformer
    assert transformer.get_params()["batch_size"] == 4
    assert clone(transformer).get_params()["batch_size"] == 4
    bob_tags = bob.pipelines.get_bob_tags(transformer)
    path = tmp_path / "x.h5"
    bob_tags["bob_features_save_fn"](numpy.ones((1, 128), dtype=numpy.float32), path)
    assert bob_tags["bob_features_load_fn"](path).dtype == numpy.float64
    numpy.testing.assert_array_equal(drn_extractor.read_data(path), numpy.ones((1, 128)))
    assert "bob_transform_extra_input" not in tags
    assert AudioEmbeddingTransformer(rate_attribute="sr")._get_tags()["bob_transform_extra_input"] == (("rate", "sr"),)


def test_transformer_builds_its_extractor_lazily(checkpoint):
    model = checkpoint("rn34")
    transformer = AudioEmbeddingTransformer(use_res=True, model_file=model)
    assert "_extractor" not in transformer.__dict__  # __init__ only stores arguments
    embedding = transformer.transform([read_audio("flite_rms_u1.wav")])[0]
    extractor = transformer._get_extractor()
    assert extractor.pretrained.name == "resnet34" and extractor.model_path == str(model)
    numpy.testing.assert_allclose(embedding, ResNetExtractor(model)(read_audio("flite_rms_u1.wav")), atol=ATOL)
    assert len(pickle.dumps(transformer)) < MAX_PICKLE_BYTES

    with pytest.raises(ValueError, match="not both"):
        AudioEmbeddingTransformer(extractor, use_res=True).transform([read_audio("flite_rms_u1.wav")])
    with pytest.raises(TypeError, match=r"extractor must be an EmbeddingExtractor \(DltResNetExtractor, ResNetExtractor"):
        AudioEmbeddingTransformer(DummyExtractor()).transform([read_audio("flite_rms_u1.wav")])
    with pytest.raises(ValueError, match="use_res=True conflicts with network='dltresnet34'; pass only network"):
        AudioEmbeddingTransformer(network="dltresnet34", use_res=True).transform([read_audio("flite_rms_u1.wav")])


def test_transformer_builds_the_registered_network_it_is_named(checkpoint):
    transformer = AudioEmbeddingTransformer(network="rn34", model_file=checkpoint("rn34"))
    audio = read_audio("flite_rms_u1.wav")
    expected = ResNetExtractor(checkpoint("rn34"))(audio)
    numpy.testing.assert_allclose(transformer.transform([audio])[0], expected, atol=ATOL, rtol=0)
    assert transformer._get_extractor().pretrained.name == "resnet34"


def test_the_transformer_uses_the_extractor_it_is_given(checkpoint):
    """Two extractors of one model file, one of them changed in memory: each transformer embeds with its own."""
    audio = read_audio("flite_rms_u1.wav")
    plain, changed = DltResNetExtractor(checkpoint("drn34")), DltResNetExtractor(checkpoint("drn34"))
    with torch.no_grad():
        changed.network.em.bias.add_(0.5)
    changed.rebuild_runtime()
    first = AudioEmbeddingTransformer(plain).transform([audio])[0]
    second = AudioEmbeddingTransformer(changed).transform([audio])[0]
    numpy.testing.assert_array_equal(first, plain(audio))
    numpy.testing.assert_array_equal(second, changed(audio))
    assert numpy.max(numpy.abs(first - second)) > 1e-3


def test_unpickled_copies_share_one_network_per_process(checkpoint):
    transformer = AudioEmbeddingTransformer(DltResNetExtractor(checkpoint("drn34")))
    first, second = (pickle.loads(pickle.dumps(transformer)) for _ in range(2))
    assert first.extractor is not second.extractor
    assert first._get_extractor() is second._get_extractor()
    assert first._get_extractor().network is second._get_extractor().network


def test_a_pickled_transformer_unpickles_without_pytorch_and_embeds_the_same(checkpoint, tmp_path):
    """What dask's scheduler does with every graph: unpickle it. PyTorch comes only with the first embedding."""
    extractor = DltResNetExtractor(checkpoint("drn34"))
    audio = read_audio("flite_rms_u1.wav")
    expected = extractor(audio)
    payload = tmp_path / "transformer.pickle"
    payload.write_bytes(pickle.dumps(AudioEmbeddingTransformer(extractor)))
    numpy.save(tmp_path / "samples.npy", audio[1])
    code = (
        "import pickle, sys, numpy\n"
        f"transformer = pickle.loads(open({str(payload)!r}, 'rb').read())\n"
        "print('torch' in sys.modules)\n"
        f"embedding = transformer.transform([({audio[0]}, numpy.load({str(tmp_path / 'samples.npy')!r}))])[0]\n"
        f"numpy.save({str(tmp_path / 'embedding.npy')!r}, embedding)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]
    numpy.testing.assert_allclose(numpy.load(tmp_path / "embedding.npy"), expected, atol=ATOL, rtol=0)


def test_relative_model_files_still_name_the_file_after_unpickling_elsewhere(checkpoint, tmp_path, monkeypatch):
    """Workers unpickle in folders of their own; a relative path means the file where the pipeline was built."""
    here, elsewhere = tmp_path / "experiment", tmp_path / "worker"
    here.mkdir()
    elsewhere.mkdir()
    shutil.copy(checkpoint("drn34"), here / "drn34.pth.tar")
    monkeypatch.chdir(here)
    extractor_payload = pickle.dumps(DltResNetExtractor("drn34.pth.tar"))
    transformer = AudioEmbeddingTransformer(model_file="drn34.pth.tar")
    transformer_payload = pickle.dumps(transformer)
    assert transformer.model_file == "drn34.pth.tar"  # the parameter itself is kept, as scikit-learn wants
    monkeypatch.chdir(elsewhere)
    audio = read_audio("flite_rms_u1.wav")
    expected = DltResNetExtractor(str(here / "drn34.pth.tar"))(audio)
    numpy.testing.assert_array_equal(pickle.loads(extractor_payload)(audio), expected)
    numpy.testing.assert_array_equal(pickle.loads(transformer_payload).transform([audio])[0], expected)


# -- dask: nothing heavy is pickled, nothing is loaded in the scheduler process ------------


def test_config_pipeline_pickles_without_the_network(config_model, fresh_config_modules, tmp_path):
    config_model("dltresnet34")
    config = runpy.run_path(importlib.util.find_spec(CONFIGS["dltresnet34"][0]).origin)
    pipeline, preprocessor = config["pipeline"], config["preprocessor"]

    # What dask ships to its workers: the checkpointed, dask-wrapped transformer and algorithm.
    wrapped = dask_bio_pipeline(checkpoint_pipeline_simple(pipeline, str(tmp_path / "ckpt")), npartitions=2)
    shipped = (wrapped.transformer, wrapped.biometric_algorithm, config["transformer"], preprocessor)
    for obj in shipped:
        assert len(pickle.dumps(obj)) < MAX_PICKLE_BYTES
    assert preprocessor._pipeline is None, "wrapping for dask must not load the network"

    preprocessor(read_audio("flite_slt_u1.wav"))  # loads the network in this process
    assert preprocessor._pipeline is not None
    for obj in shipped:
        assert len(pickle.dumps(obj)) < MAX_PICKLE_BYTES
    assert pickle.loads(pickle.dumps(preprocessor))._pipeline is None


def test_bob_preprocessor_transformer_wraps_the_config_preprocessor(config_model, fresh_config_modules):
    """bob's own adapter calls ``instance(data)`` with one argument and checkpoints through write_data/read_data."""
    config_model("dltresnet34")
    config = runpy.run_path(importlib.util.find_spec(CONFIGS["dltresnet34"][0]).origin)
    adapter = PreprocessorTransformer(config["preprocessor"])
    audio = read_audio("flite_slt_u2.wav")
    by_adapter = bob.pipelines.wrap(["sample"], adapter).transform([bob.pipelines.Sample(audio, key="x")])
    by_config = config["transformer"].transform([bob.pipelines.Sample(audio, key="x")])
    numpy.testing.assert_allclose(by_adapter[0].data, by_config[0].data, rtol=0, atol=ATOL)
    assert adapter._more_tags()["bob_features_save_fn"] == config["preprocessor"].write_data


# -- database template ---------------------------------------------------------------------


def copy_speech(folder: Path, by_speaker: bool = False) -> Path:
    for name, speaker in SPEAKERS.items():
        target = folder / speaker / name if by_speaker else folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SPEECH / name, target)
    return folder


def test_write_csv_protocol_layout(tmp_path):
    recordings = copy_speech(tmp_path / "wavs")
    folder = write_csv_protocol(recordings, tmp_path / "protocols", SPEECH / "speakers.csv", enroll_per_speaker=2)
    assert folder == tmp_path / "protocols" / "default" / "dev"
    enroll = (folder / "for_enrolling.csv").read_text().splitlines()
    probe = (folder / "for_probing.csv").read_text().splitlines()
    assert enroll[0] == probe[0] == "path,subject_id,template_id"
    assert enroll[1:] == [
        "fest_ked_u1,fest_ked,fest_ked",
        "fest_ked_u2,fest_ked,fest_ked",
        "flite_awb_u1,flite_awb,flite_awb",
        "flite_awb_u2,flite_awb,flite_awb",
        "flite_kal_u1,flite_kal,flite_kal",
        "flite_kal_u2,flite_kal,flite_kal",
        "flite_rms_u1,flite_rms,flite_rms",
        "flite_rms_u2,flite_rms,flite_rms",
        "flite_slt_u1,flite_slt,flite_slt",
        "flite_slt_u2,flite_slt,flite_slt",
        "librivox_0880,librivox_ss01_reader,librivox_ss01_reader",
        "librivox_0930,librivox_ss01_reader,librivox_ss01_reader",
    ]
    assert probe[1:] == [
        "fest_ked_u3,fest_ked,fest_ked_u3",
        "flite_awb_u3,flite_awb,flite_awb_u3",
        "flite_kal_u3,flite_kal,flite_kal_u3",
        "flite_rms_u3,flite_rms,flite_rms_u3",
        "flite_slt_u3,flite_slt,flite_slt_u3",
    ]
    assert not list(folder.glob("*.partial"))


def test_write_csv_protocol_speakers_from_folders_and_unchanged_files(tmp_path):
    recordings = copy_speech(tmp_path / "wavs", by_speaker=True)
    folder = write_csv_protocol(recordings, tmp_path / "protocols", protocol="mine", group="eval")
    assert folder == tmp_path / "protocols" / "mine" / "eval"
    enroll = read_csv(folder / "for_enrolling.csv")
    assert enroll[0] == {"path": "fest_ked/fest_ked_u1", "subject_id": "fest_ked", "template_id": "fest_ked"}
    assert len(enroll) == 6 and len(read_csv(folder / "for_probing.csv")) == 11
    before = (folder / "for_probing.csv").stat().st_mtime_ns
    os.utime(folder / "for_probing.csv", ns=(before - 10**9, before - 10**9))
    write_csv_protocol(recordings, tmp_path / "protocols", protocol="mine", group="eval")
    assert (folder / "for_probing.csv").stat().st_mtime_ns == before - 10**9, "identical files are not rewritten"


def test_write_csv_protocol_errors(tmp_path):
    flat = copy_speech(tmp_path / "flat")
    with pytest.raises(ValueError, match="subfolder named after the speaker"):
        write_csv_protocol(flat, tmp_path / "p")
    with pytest.raises(ValueError, match="no speaker given for 1 recordings"):
        write_csv_protocol(flat, tmp_path / "p", {n: s for n, s in SPEAKERS.items() if n != "fest_ked_u1.wav"})
    with pytest.raises(ValueError, match="left for probing"):
        write_csv_protocol(flat, tmp_path / "p", SPEAKERS, enroll_per_speaker=3)
    with pytest.raises(ValueError, match="no '\\*.flac' files"):
        write_csv_protocol(flat, tmp_path / "p", SPEAKERS, extension=".flac")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_csv_protocol(tmp_path / "missing", tmp_path / "p", SPEAKERS)
    for count in (0, 1.5, "2"):
        with pytest.raises(ValueError, match=f"enroll_per_speaker must be a positive integer, got {count!r}"):
            write_csv_protocol(flat, tmp_path / "p", SPEAKERS, enroll_per_speaker=count)
    with pytest.raises(ValueError, match=r"speaker of fest_ked_u1.wav: no speaker given"):
        write_csv_protocol(flat, tmp_path / "p", dict(SPEAKERS, **{"fest_ked_u1.wav": " "}))
    bad = tmp_path / "bad.csv"
    bad.write_text("name,speaker\nx.wav,a\n")
    with pytest.raises(ValueError, match="columns 'file' and 'speaker'"):
        read_speakers(bad)
    assert not (tmp_path / "p").exists()


def test_nested_folders_with_one_name_for_two_speakers_are_refused(tmp_path):
    for speaker in ("alice", "bob"):
        for take in (1, 2):
            target = tmp_path / "wavs" / speaker / "s1" / f"{take}.wav"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SPEECH / "fest_ked_u1.wav", target)
    with pytest.raises(ValueError, match=r"folders alice/s1, bob/s1 of .* would all be speaker 's1'.*pass speakers="):
        write_csv_protocol(tmp_path / "wavs", tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_a_recording_name_that_is_not_utf8_is_refused_by_name(tmp_path):
    for speaker in (b"alice", b"h\xe9l\xe8ne"):  # a Latin-1 folder name, as old archives have
        folder = os.path.join(os.fsencode(tmp_path), b"wavs", speaker)
        os.makedirs(folder)
        shutil.copy(SPEECH / "fest_ked_u1.wav", os.path.join(folder, b"1.wav"))
        shutil.copy(SPEECH / "fest_ked_u2.wav", os.path.join(folder, b"2.wav"))
    expected = r"the name of b'h\\xe9l\\xe8ne/1.wav' in .*wavs is not UTF-8 text.*rename the file or folder"
    with pytest.raises(ValueError, match=expected):
        write_csv_protocol(tmp_path / "wavs", tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_speakers_table_with_a_byte_order_mark_blank_speaker_or_latin1(tmp_path):
    table = tmp_path / "speakers.csv"
    table.write_bytes("\ufefffile,speaker\r\na.wav,alice\r\n".encode("utf-8"))  # a spreadsheet's "CSV UTF-8"
    assert read_speakers(table) == {"a.wav": "alice"}
    table.write_text("file,speaker\na.wav,alice\nb.wav,\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"speakers.csv, line 3 \(b.wav\): no speaker given"):
        read_speakers(table)
    table.write_bytes("file,speaker\nh\xe9l\xe8ne.wav,h\xe9l\xe8ne\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"speakers.csv is not UTF-8 text \(invalid continuation byte at byte \d+\); save it as UTF-8"):
        read_speakers(table)


def test_the_two_protocol_files_are_replaced_together(tmp_path):
    recordings = copy_speech(tmp_path / "wavs")
    folder = write_csv_protocol(recordings, tmp_path / "protocols", SPEAKERS)
    before = {name: (folder / name).read_bytes() for name in ("for_enrolling.csv", "for_probing.csv")}
    (folder / "for_probing.csv").unlink()
    (folder / "for_probing.csv").mkdir()  # cannot be replaced by a file
    with pytest.raises(OSError):
        write_csv_protocol(recordings, tmp_path / "protocols", SPEAKERS, enroll_per_speaker=2)
    assert (folder / "for_enrolling.csv").read_bytes() == before["for_enrolling.csv"], "old set kept, not a mix"
    assert sorted(path.name for path in folder.iterdir()) == ["for_enrolling.csv", "for_probing.csv"]


def test_recordings_database_reads_rate_and_samples(tmp_path):
    recordings = copy_speech(tmp_path / "wavs")
    database = recordings_database(recordings, tmp_path / "protocols", SPEAKERS, name="speech")
    references, probes = database.references(group="dev"), database.probes(group="dev")
    assert sorted(r.template_id for r in references) == sorted(set(SPEAKERS.values()))
    assert len(probes) == 11
    sample = [r for r in references if r.template_id == "flite_kal"][0].samples[0]
    rate, data = sample.data
    expected_rate, expected = read_audio("flite_kal_u1.wav")
    assert rate == expected_rate == 16000
    numpy.testing.assert_array_equal(data, expected)
    again = csv_database(recordings, tmp_path / "protocols", name="speech")
    assert len(again.probes(group="dev")) == 11


# -- bob bio pipeline simple, end to end ---------------------------------------------------


def checkpoint_times(folder: Path) -> dict:
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("*.h5")}


@pytest.mark.slow
def test_pipeline_simple_without_dask_checkpoints_and_reuses(
    config_model, speech_database, expected_embeddings, tmp_path
):
    config_model("dltresnet34")
    database, protocol = speech_database(enroll_per_speaker=2)
    command = [BOB, "bio", "pipeline", "simple", "-p", "dltresnet34-voxceleb", "-d", database]
    options = ["-c", "ckpt", "--no-dask", "--write-column-scores"]
    run(command + ["-o", "out"] + options, cwd=tmp_path)

    embeddings = expected_embeddings("drn34")
    expected = expected_scores(embeddings, protocol)
    assert len(expected) == 6 * 5
    first = assert_scores(tmp_path / "out" / "scores-dev", expected)

    features = tmp_path / "ckpt" / "samplewrapper"
    assert sorted(checkpoint_times(features)) == sorted(f"{stem}.h5" for stem in embeddings)
    for stem, embedding in embeddings.items():
        stored = io.read_embedding(features / f"{stem}.h5")
        assert stored.dtype == numpy.float64 and stored.shape == (1, 128)
        numpy.testing.assert_allclose(stored[0], embedding, rtol=0, atol=ATOL)

    # Re-run: the embeddings come back through read_data. Plant a known vector in one probe's file
    # and drop the enrolled templates, so every score is recomputed from the checkpointed files.
    enrolled = [io.read_embedding(features / f"flite_awb_u{i}.h5") for i in (1, 2)]
    planted = numpy.mean(numpy.vstack(enrolled), axis=0)[numpy.newaxis]
    io.write_embedding(planted, features / "flite_kal_u3.h5")
    shutil.rmtree(tmp_path / "ckpt" / "biometric_references")
    times = checkpoint_times(features)
    run(command + ["-o", "out2"] + options, cwd=tmp_path)

    assert checkpoint_times(features) == times, "existing checkpoints must be reused, not recomputed"
    second = read_scores(tmp_path / "out2" / "scores-dev")
    assert set(second) == set(first)
    assert second["flite_awb", "flite_kal_u3"] == pytest.approx(0.0, abs=1e-9)
    unchanged = [pair for pair in first if pair[1] != "flite_kal_u3"]
    numpy.testing.assert_allclose([second[p] for p in unchanged], [first[p] for p in unchanged], rtol=0, atol=1e-6)

    metrics = run([BOB, "bio", "metrics", "out/scores-dev"], cwd=tmp_path).stdout
    assert "Half Total Error Rate" in metrics
    assert "/5)" in metrics and "/25)" in metrics  # 5 genuine and 25 impostor scores


@pytest.mark.slow
def test_pipeline_simple_with_local_parallel_dask_workers(config_model, speech_database, expected_embeddings, tmp_path):
    config_model("dltresnet34")
    database, protocol = speech_database(enroll_per_speaker=2)
    run(
        [BOB, "bio", "pipeline", "simple", "-p", "dltresnet34-voxceleb", "-d", database, "-o", "out",
         "-c", "ckpt", "-l", "local-parallel", "--write-column-scores"],
        cwd=tmp_path,
    )
    assert_scores(tmp_path / "out" / "scores-dev", expected_scores(expected_embeddings("drn34"), protocol))
    assert len(checkpoint_times(tmp_path / "ckpt" / "samplewrapper")) == len(SPEAKERS)


@pytest.mark.slow
def test_pipeline_simple_resnet34_resource_in_memory_csv_scores(
    config_model, speech_database, expected_embeddings, tmp_path
):
    """The README's two commands: bob's default CSV scores, read by ``bob bio metrics``."""
    config_model("resnet34")
    database, protocol = speech_database(enroll_per_speaker=1)
    run(
        [BOB, "bio", "pipeline", "simple", "-p", "resnet34-voxceleb", "-d", database, "-g", "dev", "-o", "out",
         "-m", "--no-dask"],
        cwd=tmp_path,
    )
    expected = expected_scores(expected_embeddings("rn34"), protocol)
    assert len(expected) == 6 * 11
    assert_scores(tmp_path / "out" / "scores-dev.csv", expected, reader=read_csv_scores)
    metrics = run([BOB, "bio", "metrics", "out/scores-dev.csv"], cwd=tmp_path).stdout
    assert "/11)" in metrics and "/55)" in metrics
