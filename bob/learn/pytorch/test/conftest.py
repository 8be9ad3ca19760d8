"""Shared fixtures: golden data (``data/``), reference checkpoints, isolated user settings; a file behind a link."""
from pathlib import Path
from typing import Tuple

import numpy
import pytest

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
