"""Shared fixtures: golden data (``data/``), reference checkpoints, isolated user settings; a file behind a link.

Also the helpers that write user settings: as bob 12's and bob.extension's
``bob config set`` do (their real commands), or by hand.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import numpy
import pytest
import torch
from torch import nn

from bob.learn.pytorch.architectures.utils import SpeakerEmbeddingNet

from .reference_checkpoints import DATA, write_reference_checkpoint

REPO = Path(__file__).resolve().parents[4]
SPEECH = Path(__file__).resolve().parents[1] / "data" / "speech"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """``checkpoint(net, variant="original")``: path of a reference checkpoint, built once per session."""
    folder = tmp_path_factory.mktemp("checkpoints")
    cache = {}

    def build(net: str, variant: str = "original") -> Path:
        if (net, variant) not in cache:
            path = folder / f"{net}_{variant}.pth.tar"
            write_reference_checkpoint(net, path, variant)
            cache[net, variant] = path
        return cache[net, variant]

    return build


@pytest.fixture(scope="session")
def drn_file(checkpoint):
    return checkpoint("drn34")


@pytest.fixture(scope="session")
def rn_file(checkpoint):
    return checkpoint("rn34", "numpy_scalar")


@pytest.fixture(scope="session")
def drn_extractor(drn_file):
    from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor

    return DltResNetExtractor(str(drn_file))


@pytest.fixture(scope="session")
def rn_extractor(rn_file):
    from bob.learn.pytorch.preprocessor.audio import ResNetExtractor

    return ResNetExtractor(str(rn_file))


@pytest.fixture(scope="session")
def extractors(drn_extractor, rn_extractor):
    """``{"drn": DltResNetExtractor, "rn": ResNetExtractor}``, keyed as in the fixture files."""
    return {"drn": drn_extractor, "rn": rn_extractor}


@pytest.fixture(scope="session")
def payloads(checkpoint):
    """Bytes of reference checkpoints: DltResNet (legacy format) and ResNet carrying a numpy scalar."""
    return {
        "drn34.pth.tar": Path(checkpoint("drn34")).read_bytes(),
        "rn34.pth.tar": Path(checkpoint("rn34", "numpy_scalar")).read_bytes(),
    }


@pytest.fixture
def server(payloads):
    """A model server on 127.0.0.1 serving ``payloads``, with fault modes (see model_server.py)."""
    from .model_server import ModelServer

    with ModelServer(payloads) as running:
        yield running


def file_behind_link(folder: Path, name: str, text: str, mode: int) -> Tuple[Path, Path]:
    """``folder/runs/<name>`` holding ``text`` with permission bits ``mode``, and the link ``folder/latest.h5`` to it.

    Returns ``(real, link)``: a file replaced through the link must keep both.
    """
    real = folder / "runs" / name
    real.parent.mkdir()
    real.write_text(text)
    real.chmod(mode)
    link = folder / "latest.h5"
    link.symlink_to(real)
    return real, link


def listing(path: Path) -> list:
    """The names in folder ``path``, sorted."""
    return sorted(entry.name for entry in path.iterdir())


#: A user id that is neither root nor the folder's owner, for links "planted by another user".
OTHER_USER = 54321


def plant_link(folder: Path, name: str, target: Path) -> Tuple[Path, Path]:
    """A sticky folder everyone can write (as /tmp) in ``folder``, holding a link ``name`` of another user to ``target``.

    Returns the shared folder and the link. Planting needs root (``lchown``): the test is skipped otherwise.
    """
    if os.geteuid() != 0:
        pytest.skip("planting a link of another user needs root")
    shared = folder / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    link = shared / name
    link.symlink_to(target)
    os.lchown(link, OTHER_USER, OTHER_USER)
    return shared, link


def fill(folder: Path) -> None:
    """Take every free byte of the file system holding ``folder``."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


def load_fixture(name: str):
    """Arrays of the golden file ``data/<name>.npz`` (see ``data/README.md``)."""
    with numpy.load(DATA / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Any HTTP request of the tests' own process to a host other than loopback fails at once."""
    import requests
    from urllib.parse import urlsplit

    send = requests.adapters.HTTPAdapter.send

    def guarded_send(adapter, request, *args, **kwargs):
        host = urlsplit(request.url).hostname
        if host not in LOOPBACK:
            raise requests.ConnectionError(f"tests may not reach {host}: serve the file from 127.0.0.1")
        return send(adapter, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", guarded_send)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Never read or write the real user settings or cache: HOME, XDG_CONFIG_HOME, XDG_CACHE_HOME and BOBRC point to tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("BOB_LEARN_PYTORCH_RUNTIME_CACHE", raising=False)
    monkeypatch.setenv("BOBRC", str(home / ".bobrc"))
    return home


BOB12 = Path(sys.executable).parent / "bob"


def bob12_config_set(key: str, value: str) -> None:
    """Run bob 12's real ``bob config set`` with the test's HOME / XDG_CONFIG_HOME."""
    if not BOB12.is_file():
        pytest.fail(f"bob 12's command {BOB12} is missing; install bob>=12")
    subprocess.run([str(BOB12), "config", "set", key, value], env=dict(os.environ), check=True, capture_output=True, timeout=300)


def bob_extension_config_set(key: str, value: str) -> None:
    """Run bob.extension's real ``bob config set`` (its console script is shadowed by bob 12's)."""
    code = "import sys; from bob.extension.scripts import main_cli; sys.argv[0] = 'bob'; main_cli()"
    subprocess.run(
        [sys.executable, "-c", code, "config", "set", key, value],
        env=dict(os.environ),
        check=True,
        capture_output=True,
        timeout=300,
    )


def write_toml(home: Path, text: str) -> Path:
    """bob 12's settings file ``home/.config/bobrc.toml`` holding ``text``."""
    path = home / ".config" / "bobrc.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_json(path: Path, settings: dict) -> Path:
    """bob.extension's JSON settings file ``path`` holding ``settings``."""
    path.write_text(json.dumps(settings, indent=4))
    return path


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """The package data folder, moved to a temporary folder."""
    from bob.learn.pytorch import pretrained

    path = tmp_path / "package-data"
    monkeypatch.setattr(pretrained, "DATA_DIR", str(path))
    return path



class ToyNet(SpeakerEmbeddingNet):
    """Two strided convolutions over the whole spectrum, then the shared pooling and embedding layer.

    Time stride 4, receptive field 3 (frames on the left of an output step's own four), two output steps from 5 frames.
    """

    def __init__(self, num_classes: int = 5, tp: str = "emb", bn_dim: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=(3, 257), stride=(2, 1), padding=(1, 0))
        self.conv2 = nn.Conv2d(8, 12, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0))
        self.relu = nn.ReLU()
        self.em = nn.Linear(24, bn_dim)
        self.fc = nn.Linear(24, num_classes)
        self._set_net_type(tp)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))))


def toy_network(num_classes: int = 5, tp: str = "emb", bn_dim: int = 16) -> ToyNet:
    """The toy network's architecture function (module level, so that a record naming it pickles)."""
    return ToyNet(num_classes, tp, bn_dim)


def toy_record(**changes):
    """A record of the toy network (``toy2``, unregistered), with ``changes``."""
    import dataclasses

    from bob.learn.pytorch.pretrained import PretrainedNetwork

    record = PretrainedNetwork(
        name="toy2", title="Toy CNN 2", architecture=toy_network, filename="toy2.pth", url="http://127.0.0.1/toy2.pth",
        path_key="tests.toy2.modelpath", url_key="tests.toy2.url", sha256_key="tests.toy2.sha256", time_stride=4,
        receptive_field=3, min_frames=5, embedding_dim=16, num_classes=5,
    )
    return dataclasses.replace(record, **changes)
def _untraceable_resnet34(**arguments):
    from bob.learn.pytorch.architectures.ResNet import ResNet, resnet34

    class UntraceableResNet(ResNet):
        """A ResNet-34 whose frame body branches on its input's values, which ``torch.export`` cannot trace."""

        def forward_frames(self, x):
            if x.device.type != "meta" and float(x.abs().sum()) < 0:  # never true, but it depends on the data
                x = -x
            return super().forward_frames(x)

    network = resnet34(**arguments)
    network.__class__ = UntraceableResNet
    return network


@pytest.fixture
def untraceable():
    """A registered network ``untraceable`` (the ResNet-34's record and weights) that the ONNX exporter cannot trace."""
    import dataclasses

    from bob.learn.pytorch import pretrained

    record = dataclasses.replace(
        pretrained.get("resnet34"), name="untraceable", title="Untraceable ResNet-34", architecture=_untraceable_resnet34, aliases=()
    )
    pretrained.register(record)
    yield record
    pretrained.unregister("untraceable")
