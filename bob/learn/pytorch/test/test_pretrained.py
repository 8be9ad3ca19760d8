"""The registry of networks: lookups, the geometry each record declares, and a third network added by one record.

The toy network (conftest.py) is registered from this test module, outside
the package's files, and run everywhere a released network runs: the extractor,
the batch API, a long recording (streamed), the transformer in a bob
pipeline, the command line, and the download of a missing weight file.
"""
import inspect
import os
import subprocess
import sys

import numpy
import pytest
import torch

from bob.learn.pytorch import pretrained
from bob.learn.pytorch.pretrained import PretrainedNetwork
from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor

from .conftest import SPEECH as SPEECH_DIR
from .conftest import ToyNet, toy_network, toy_record
from .helpers_audio import ATOL, long_signal, speech, whole_spectrogram

# -- lookups -----------------------------------------------------------------------------------------


def test_released_networks_are_registered_with_their_original_names_as_aliases():
    assert pretrained.names()[:2] == ["dltresnet34", "resnet34"]
    assert pretrained.get("drn34") is pretrained.get("drn") is pretrained.get("dltresnet34")
    assert pretrained.get("rn34") is pretrained.get("resnet34")
    record = pretrained.get("resnet34")
    assert pretrained.get(record) is record
    assert record.path_key == "bob.learn.pytorch.extractor.audio.rn_modelpath"
    assert record.url_key == "bob.learn.pytorch.extractor.audio.rn_url"
    assert record.sha256_key == "bob.learn.pytorch.extractor.audio.rn_sha256"
    assert record.filename == "rn34.pth.tar" and record.url.startswith("https://www.idiap.ch/")


def test_unknown_names_and_clashing_records_are_refused():
    with pytest.raises(ValueError, match="unknown network 'vgg'; registered networks: dltresnet34, resnet34"):
        pretrained.get("vgg")
    with pytest.raises(TypeError, match="network must be a registered name or a PretrainedNetwork, got int"):
        pretrained.get(3)
    clash = PretrainedNetwork(
        name="other", title="Other", architecture=toy_network, filename="o.pth", url="http://127.0.0.1/o",
        path_key="k.path", url_key="k.url", sha256_key="k.sha", aliases=("drn34",),
    )
    with pytest.raises(ValueError, match="network name 'drn34' is already registered for DltResNet-34"):
        pretrained.register(clash)
    assert "other" not in pretrained.names()


# -- geometry declared once, checked against the networks -------------------------------------------------


def reach_of(network, record, frames=1600, base=800):
    """Largest distance, in frames, from an output step's own frames to an input frame that changes it.

    One input frame at a time, at every offset within a stride, is changed
    and the output steps that move are noted.
    """
    stride = record.time_stride
    x = torch.randn(1, 1, frames, record.front_end.bins, generator=torch.Generator().manual_seed(0))
    batch = x.repeat(stride + 1, 1, 1, 1)
    for offset in range(stride):
        batch[offset + 1, 0, base + offset] += 1.0
    with torch.inference_mode():
        features = network.forward_frames(batch)
    reach = 0
    for offset in range(stride):
        moved = (features[offset + 1] - features[0]).abs().amax(dim=(0, 2)) > 0
        for step in moved.nonzero().flatten().tolist():
            first, last = step * stride, step * stride + stride - 1
            reach = max(reach, first - (base + offset), (base + offset) - last)
    return reach, features.shape[2]


@pytest.mark.parametrize("name", ["dltresnet34", "resnet34"])
def test_declared_stride_receptive_field_and_minimum_match_the_network(name):
    record = pretrained.get(name)
    torch.manual_seed(0)
    network = record.build().eval()
    reach, steps = reach_of(network, record)
    assert reach == record.receptive_field  # exact: a change of the architecture shows here
    assert record.halo_steps * record.time_stride >= record.receptive_field + record.time_stride
    assert steps == record.output_steps(1600) == 1600 // record.time_stride
    with torch.inference_mode():
        for n_frames in (record.min_frames - 1, record.min_frames, 300, 1001):
            features = network.forward_frames(torch.zeros(1, 1, n_frames, record.front_end.bins))
            assert features.shape[2] == record.output_steps(n_frames)
    assert record.output_steps(record.min_frames) == 2 and record.output_steps(record.min_frames - 1) == 1


def test_front_end_sizes_derive_from_the_declared_settings():
    front_end = pretrained.get("dltresnet34").front_end
    assert (front_end.sample_rate, front_end.win_length, front_end.win_shift, front_end.fft_size, front_end.bins) == (
        16000, 400, 160, 512, 257,
    )
    assert front_end.samples_for(37) == 6160 and front_end.n_frames(6160) == 37 and front_end.n_frames(6159) == 36


# -- a third network, added by one record ----------------------------------------------------------------


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy network registered as ``toy``, its weight file served on 127.0.0.1; unregistered afterwards."""
    from .model_server import ModelServer

    torch.manual_seed(7)
    weights = tmp_path / "toy-weights.pth"
    torch.save({"state_dict": toy_network().state_dict()}, weights)
    monkeypatch.setattr(pretrained, "DATA_DIR", str(tmp_path / "data"))
    with ModelServer({"toy.pth": weights.read_bytes()}) as server:
        record = pretrained.register(
            PretrainedNetwork(
                name="toy", title="Toy CNN", architecture=toy_network, filename="toy.pth",
                url=server.url("toy.pth"), path_key="tests.toy.modelpath", url_key="tests.toy.url",
                sha256_key="tests.toy.sha256", time_stride=4, receptive_field=3, min_frames=5,
                embedding_dim=16, num_classes=5,
            )
        )
        try:
            yield record, weights
        finally:
            pretrained.unregister("toy")
    assert "toy" not in pretrained.names()


def test_the_toy_records_geometry_matches_its_network(toy):
    record, _ = toy
    reach, _ = reach_of(record.build().eval(), record, frames=200, base=100)
    assert reach == record.receptive_field
    assert record.output_steps(record.min_frames) == 2 and record.output_steps(record.min_frames - 1) == 1


def test_the_toy_network_is_downloaded_and_runs_through_the_extractor(toy):
    record, weights = toy
    extractor = EmbeddingExtractor("toy")  # no file given: downloaded from the record's URL into the data folder
    assert extractor.model_path == record.default_path
    audio = speech("flite_kal_u1")
    embedding = extractor(audio)
    assert embedding.shape == (1, 16) and embedding.dtype == numpy.float32
    network = toy_network().eval()
    network.load_state_dict(torch.load(weights, weights_only=True)["state_dict"])
    from .helpers_audio import eager_embedding  # the plain computation, with this network

    numpy.testing.assert_allclose(embedding, eager_embedding(network, whole_spectrogram(audio)), rtol=0, atol=ATOL)
    batch = extractor.embed_many([audio, speech("fest_ked_u1"), audio], batch_size=2)
    numpy.testing.assert_allclose(batch, numpy.vstack([embedding, extractor(speech("fest_ked_u1")), embedding]), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"audio too short: .*needs at least 5 frames, i.e. 1040 samples"):
        extractor((16000, numpy.ones(1000, dtype=numpy.int16)))


def test_a_long_recording_streams_through_the_toy_network(toy):
    record, weights = toy
    extractor = EmbeddingExtractor(record, weights)
    audio = (16000, long_signal())
    whole = extractor(audio)
    extractor.pipeline.streaming_min_frames = 100
    from bob.learn.pytorch import streaming

    source = streaming.signal_source(audio)
    assert len(streaming.plan_blocks(source.n_frames, record, 64)) > 5
    streamed = streaming.embed_long(extractor.network, extractor.pipeline.runtime, source, record, block_steps=64)
    numpy.testing.assert_allclose(streamed, whole, rtol=0, atol=ATOL)
    numpy.testing.assert_allclose(extractor(audio), whole, rtol=0, atol=ATOL)


def test_the_toy_network_runs_in_a_bob_pipeline(toy):
    import bob.pipelines

    from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

    record, weights = toy
    expected = EmbeddingExtractor("toy", weights)(speech("flite_awb_u1"))
    samples = [bob.pipelines.Sample(speech("flite_awb_u1"), key="a")]
    wrapped = bob.pipelines.wrap(["sample"], AudioEmbeddingTransformer(network="toy", model_file=weights))
    (result,) = wrapped.transform(samples)
    assert result.data.shape == (1, 16)
    numpy.testing.assert_allclose(result.data, expected, rtol=0, atol=ATOL)


def test_the_toy_network_runs_from_the_command_line(toy, tmp_path):
    import h5py
    from click.testing import CliRunner

    from bob.learn.pytorch.script.pytorch import pytorch

    from .conftest import SPEECH

    record, weights = toy
    output = tmp_path / "toy.h5"
    result = CliRunner().invoke(
        pytorch, ["extract-audio", str(SPEECH / "flite_kal_u1.wav"), "-o", str(output), "--network", "toy", "--model", str(weights)]
    )
    assert result.exit_code == 0, result.output
    with h5py.File(output, "r") as hdf5:
        stored = hdf5["flite_kal_u1"][()]
        assert hdf5.attrs["network"] == "toy"
    numpy.testing.assert_allclose(stored, EmbeddingExtractor("toy", weights)(speech("flite_kal_u1")), atol=ATOL, rtol=0)
    info = CliRunner().invoke(pytorch, ["info"])
    assert "Toy CNN (--network toy)" in info.output and "tests.toy.modelpath: not set" in info.output


# -- every record checked once, when registered ------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, error, message",
    [
        (dict(name=3), TypeError, "network record: name must be a non-empty text without spaces, commas or '|', not 3"),
        (dict(name=""), TypeError, "network record: name must be a non-empty text"),
        (dict(name="my net"), TypeError, "name must be a non-empty text without spaces"),
        (dict(aliases="t2"), TypeError, "network record 'toy2': aliases must be a tuple of names, not the text 't2' "
                                        "(each character would become an alias); write aliases=('t2',)"),
        (dict(aliases=("t2", 5)), TypeError, "network record 'toy2': aliases must be a tuple of non-empty names, not ('t2', 5)"),
        (dict(time_stride=0), ValueError, "network record 'toy2': time_stride must be a whole number >= 1, not 0"),
        (dict(time_stride=4.0), TypeError, "network record 'toy2': time_stride must be a whole number >= 1, not 4.0"),
        (dict(min_frames=True), TypeError, "min_frames must be a whole number >= 1, not True"),
        (dict(receptive_field=-1), ValueError, "receptive_field must be a whole number >= 0, not -1"),
        (dict(filename="../toy2.pth"), ValueError, "filename must be a bare file name (it is stored in DATA_DIR), not '../toy2.pth'"),
        (dict(url="ftp://host/toy2.pth"), ValueError, "url must be an http:// or https:// address, not 'ftp://host/toy2.pth'"),
        (dict(sha256="ABC"), ValueError, "sha256 must be None or 64 lower-case hexadecimal digits, not 'ABC'"),
        (dict(path_key=""), TypeError, "path_key must be a non-empty text, not ''"),
        (dict(min_frames=4), ValueError, "network record 'toy2': min_frames=4 gives 1 output step(s), but the pooled "
                                         "standard deviation needs two (otherwise every embedding of such a recording "
                                         "is NaN); set min_frames=5"),
        (dict(receptive_field=2), ValueError, "network record 'toy2': receptive_field=2 is too small: an output step "
                                              "changes with input frames up to 3 frames beyond its own, so long "
                                              "recordings (embedded block by block) would get other embeddings than "
                                              "in one pass; set receptive_field=3"),
    ],
    ids=lambda value: str(value)[:30],
)
def test_register_refuses_a_bad_record_naming_the_field_and_the_fix(changes, error, message):
    with pytest.raises(error) as caught:
        pretrained.register(toy_record(**changes))
    assert message in str(caught.value)
    assert "toy2" not in pretrained.names() and "t" not in pretrained.names()


def test_a_good_record_registers_and_its_aliases_may_be_a_list():
    record = pretrained.register(toy_record(aliases=["t2", "toy-two"], receptive_field=5))  # a wider reach is safe
    try:
        assert record.aliases == ("t2", "toy-two") and pretrained.get("toy-two") is record
    finally:
        pretrained.unregister("toy2")


def test_measured_reach_is_what_perturbing_frames_finds():
    record = toy_record()
    torch.manual_seed(0)
    reach, _ = reach_of(record.build().eval(), record, frames=200, base=100)
    assert pretrained.measured_reach(record) == reach == 3
    assert pretrained.measured_reach(toy_record(receptive_field=0)) == 3  # a probe sized for 0 still shows 3


def test_parameter_shapes_are_derived_once_per_record():
    record = toy_record()
    shapes = pretrained.parameter_shapes(record)
    assert shapes == {key: tuple(value.shape) for key, value in toy_network().state_dict().items()}
    assert list(shapes)[:2] == ["conv1.weight", "conv1.bias"] and shapes["em.weight"] == (16, 24)
    before = pretrained._meta_network.cache_info().misses
    pretrained.parameter_shapes(record), record.output_steps(300)
    assert pretrained._meta_network.cache_info().misses == before  # one meta network per record, shared


# -- an extractor on an unregistered record that shares a registered name ---------------------------


def impostor_record():
    """A record named ``resnet34`` (registered for the ResNet-34) that builds the toy network."""
    return toy_record(name="resnet34", title="Impostor", aliases=())


def test_a_transformer_ships_an_unregistered_record_whole(tmp_path):
    """On a worker (a fresh interpreter), the extractor embeds with its own record, not the registered namesake."""
    import pickle
    import subprocess
    import sys

    from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

    torch.manual_seed(3)
    weights = tmp_path / "impostor.pth"
    torch.save({"state_dict": toy_network().state_dict()}, weights)
    extractor = EmbeddingExtractor(impostor_record(), weights, backend="eager")
    expected = extractor(speech("flite_kal_u1"))
    transformer = AudioEmbeddingTransformer(extractor)
    shipped = pickle.dumps(transformer)
    assert pickle.loads(shipped).extractor.state["pretrained"] == impostor_record()
    code = (
        "import pickle, sys, numpy, scipy.io.wavfile\n"
        "transformer = pickle.loads(sys.stdin.buffer.read())\n"
        f"audio = scipy.io.wavfile.read({str(SPEECH_DIR / 'flite_kal_u1.wav')!r})\n"
        "numpy.save(sys.argv[1], transformer.transform([audio])[0])\n"
    )
    out = tmp_path / "worker.npy"
    done = subprocess.run([sys.executable, "-c", code, str(out)], input=shipped, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    worker = numpy.load(out)
    assert worker.shape == (1, 16)
    numpy.testing.assert_allclose(worker, expected, rtol=0, atol=ATOL)
    registered = AudioEmbeddingTransformer(network="resnet34")  # the namesake by name travels by name
    assert pickle.loads(pickle.dumps(registered)).network == "resnet34"


def test_an_unregistered_record_that_cannot_travel_is_refused_loudly(tmp_path):
    import pickle

    from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

    weights = tmp_path / "impostor.pth"
    torch.save({"state_dict": toy_network().state_dict()}, weights)
    local = impostor_record().__class__(**{**impostor_record().__dict__, "architecture": lambda **kw: toy_network(**kw)})
    transformer = AudioEmbeddingTransformer(EmbeddingExtractor(local, weights, backend="eager"))
    with pytest.raises(TypeError) as caught:
        pickle.dumps(transformer)
    assert str(caught.value).startswith(
        "the extractor's network record 'resnet34' is not the registered network of that name, so it must travel to "
        "other processes whole, but it cannot be pickled ("
    )
    assert "Can't pickle local object" in str(caught.value)
    assert str(caught.value).endswith(
        "register it (pretrained.register, or a plug-in), or make its architecture a module-level function"
    )


def test_a_transformer_given_a_record_builds_with_that_record(tmp_path):
    from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

    torch.manual_seed(4)
    weights = tmp_path / "impostor.pth"
    torch.save({"state_dict": toy_network().state_dict()}, weights)
    (embedding,) = AudioEmbeddingTransformer(network=impostor_record(), model_file=weights).transform([speech("flite_kal_u1")])
    expected = EmbeddingExtractor(impostor_record(), weights, backend="eager")(speech("flite_kal_u1"))
    numpy.testing.assert_allclose(embedding, expected, rtol=0, atol=ATOL)


# -- a network shipped by another installed package (a plug-in) -------------------------------------------

PLUGIN_HEADER = '''"""A network plug-in for bob.learn.pytorch: the toy network and its record."""
import torch
from torch import nn

from bob.learn.pytorch.architectures.utils import SpeakerEmbeddingNet
from bob.learn.pytorch.pretrained import PretrainedNetwork


'''

PLUGIN_RECORD = '''

def toyplug(num_classes=5, tp="emb", bn_dim=16):
    return ToyNet(num_classes, tp, bn_dim)


RECORD = PretrainedNetwork(
    name="toyplug", title="Toy plug-in CNN", architecture=toyplug, filename="toyplug.pth", url={url!r},
    path_key="toyplug.modelpath", url_key="toyplug.url", sha256_key="toyplug.sha256",
    time_stride=4, receptive_field=3, min_frames=5, embedding_dim=16, num_classes=5,
)


def too_narrow():
    """A record whose declared receptive field is too small: refused on its first lookup."""
    import dataclasses

    return dataclasses.replace(RECORD, name="toynarrow", receptive_field=1)
'''


def plugin_module(url: str) -> str:
    """The plug-in's module: the suite's toy network (its source, so the plug-in imports nothing of the tests) and its record."""
    return PLUGIN_HEADER + inspect.getsource(ToyNet) + PLUGIN_RECORD.format(url=url)


def write_distribution(site, name: str, entry_points: str) -> None:
    """A throw-away installed distribution ``name`` 1.0 in ``site`` (a ``*.dist-info`` with its entry points)."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[bob.learn.pytorch.networks]\n{entry_points}\n")


@pytest.fixture
def plugin_site(tmp_path, isolated_settings, monkeypatch):
    """A folder holding the installed distributions ``toyplug`` and ``brokenplug``, put on PYTHONPATH.

    The toy plug-in's weights are served on 127.0.0.1 and downloaded where the
    user setting ``toyplug.modelpath`` says. Yields ``(site, weights file, server)``.
    """
    from .conftest import write_toml
    from .model_server import ModelServer

    site = tmp_path / "site"
    site.mkdir()
    torch.manual_seed(11)
    weights = tmp_path / "toyplug-weights.pth"
    torch.save({"state_dict": toy_network().state_dict()}, weights)
    with ModelServer({"toyplug.pth": weights.read_bytes()}) as server:
        (site / "toyplug_pkg.py").write_text(plugin_module(server.url("toyplug.pth")))
        write_distribution(site, "toyplug", "toyplug = toyplug_pkg:RECORD\ntoynarrow = toyplug_pkg:too_narrow")
        write_distribution(site, "brokenplug", "broken = toyplug_pkg:no_such_record")
        write_toml(isolated_settings, f'[toyplug]\nmodelpath = "{tmp_path / "models" / "toyplug.pth"}"\n')
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site)] + [p for p in sys.path if p]))
        yield site, weights, server


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def test_a_plugin_network_is_known_to_a_new_process_and_a_broken_one_is_named(plugin_site):
    code = (
        "import sys\n"
        "from bob.learn.pytorch import pretrained\n"
        "print('toyplug_pkg' in sys.modules)\n"  # importing the registry reads no plug-in
        "print(pretrained.names())\n"
        "print(pretrained.get('toyplug').title)\n"
        "for name in ('broken', 'toynarrow'):\n"
        "    try:\n"
        "        pretrained.get(name)\n"
        "    except ValueError as error:\n"
        "        print(error)\n"
        "print(pretrained.names())\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines.pop(0) == "False"
    assert lines[0] == "['dltresnet34', 'resnet34', 'toyplug', 'toynarrow']"
    assert lines[1] == "Toy plug-in CNN"
    broken = (
        "network plug-in 'broken = toyplug_pkg:no_such_record' (distribution brokenplug 1.0, entry point group "
        "bob.learn.pytorch.networks) could not be loaded: AttributeError: module 'toyplug_pkg' has no attribute "
        "'no_such_record'; fix or uninstall that package"
    )
    assert lines[2] == f"unknown network 'broken' ({broken}); registered networks: dltresnet34, resnet34, toyplug, toynarrow"
    narrow = (
        "network plug-in 'toynarrow = toyplug_pkg:too_narrow' (distribution toyplug 1.0, entry point group "
        "bob.learn.pytorch.networks) could not be loaded: ValueError: network record 'toynarrow': receptive_field=1 "
        "is too small: an output step changes with input frames up to 3 frames beyond its own, so long recordings "
        "(embedded block by block) would get other embeddings than in one pass; set receptive_field=3; fix or "
        "uninstall that package"
    )
    assert lines[3] == f"unknown network 'toynarrow' ({narrow}); registered networks: dltresnet34, resnet34, toyplug"
    assert lines[4] == "['dltresnet34', 'resnet34', 'toyplug']"
    assert f"PluginWarning: {broken}" in done.stderr and f"PluginWarning: {narrow}" in done.stderr


def test_a_plugin_network_runs_from_the_command_line_of_a_new_process(plugin_site, tmp_path):
    import h5py

    from .conftest import BOB12, SPEECH

    site, weights, server = plugin_site
    output = tmp_path / "toyplug.h5"
    wav = SPEECH / "flite_kal_u1.wav"
    command = [str(BOB12), "pytorch", "extract-audio", str(wav), "-o", str(output), "--network", "toyplug", "--backend", "eager"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert server.requests == [("toyplug.pth", "ok")]  # downloaded where the setting says, from the record's URL
    downloaded = tmp_path / "models" / "toyplug.pth"
    assert downloaded.read_bytes() == weights.read_bytes()
    with h5py.File(output, "r") as hdf5:
        stored = hdf5["flite_kal_u1"][()]
        assert hdf5.attrs["network"] == "toyplug"
    network = toy_network().eval()
    network.load_state_dict(torch.load(weights, weights_only=True)["state_dict"])
    from .helpers_audio import eager_embedding

    numpy.testing.assert_allclose(stored, eager_embedding(network, whole_spectrogram(speech("flite_kal_u1"))), rtol=0, atol=ATOL)
    info = subprocess.run([str(BOB12), "pytorch", "info"], capture_output=True, text=True, timeout=900)
    assert info.returncode == 0, info.stderr
    assert "Toy plug-in CNN (--network toyplug)" in info.stdout
    assert f"  model file:   {downloaded} [present]" in info.stdout
    assert "PluginWarning" in info.stderr and "'broken = toyplug_pkg:no_such_record' (distribution brokenplug 1.0" in info.stderr


def test_a_plugin_network_is_known_to_a_spawned_worker(plugin_site, tmp_path):
    """A transformer naming the plug-in network is pickled into a fresh interpreter, as dask sends it to a worker."""
    import pickle

    from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

    site, weights, _ = plugin_site
    shipped = pickle.dumps(AudioEmbeddingTransformer(network="toyplug", model_file=weights))
    assert b"toyplug_pkg" not in shipped  # the network travels by name: the worker finds the plug-in itself
    code = (
        "import pickle, sys, numpy, scipy.io.wavfile\n"
        "transformer = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        f"audio = scipy.io.wavfile.read({str(SPEECH_DIR / 'flite_kal_u1.wav')!r})\n"
        "numpy.save(sys.argv[2], transformer.transform([audio])[0])\n"
    )
    (tmp_path / "transformer.pkl").write_bytes(shipped)
    done = run_python(code, str(tmp_path / "transformer.pkl"), str(tmp_path / "worker.npy"))
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(site))
    try:
        import toyplug_pkg

        expected = EmbeddingExtractor(toyplug_pkg.RECORD, weights, backend="eager")(speech("flite_kal_u1"))
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("toyplug_pkg", None)
    numpy.testing.assert_allclose(numpy.load(tmp_path / "worker.npy"), expected, rtol=0, atol=ATOL)
