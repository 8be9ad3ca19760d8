"""Every row of doc/robustness.rst is checked against the code."""
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path

import h5py
import numpy
import pytest
import torch

import bob.learn.pytorch as package
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor

from .conftest import REPO
from .forked_worker import embed_in_forked_child

TABLE = REPO / "doc" / "robustness.rst"
NOISE = numpy.random.RandomState(7).randint(-3000, 3000, 16000).astype(numpy.int16)
SPECS = numpy.random.RandomState(7).rand(300, 257)


def table_rows(table: int = 0):
    """(input, outcome, message) triplets of list-table number ``table`` of the page, header excluded."""
    text = TABLE.read_text().split(".. list-table::")[1 + table]
    cells = re.findall(r"^   [* ] - (.*)$", text, flags=re.MULTILINE)
    rows = [tuple(cells[i : i + 3]) for i in range(0, len(cells), 3)]
    return rows[1:]


class Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def _checkpoint_case(kind, tmp_path, drn_file, rn_file):
    path = tmp_path / f"{kind}.pth.tar"
    if kind == "other_architecture":
        return DltResNetExtractor(str(rn_file)).network
    if kind == "other_classes":
        return DltResNetExtractor(str(drn_file), num_classes=10).network
    if kind == "truncated":
        path.write_bytes(Path(drn_file).read_bytes()[:5_000_000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("model weights go here\n")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.txt", "x")
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps(Payload()))
    elif kind == "nan":
        state = torch.load(drn_file, weights_only=True)["state_dict"]
        nan = {key: value.clone().fill_(float("nan")) if value.is_floating_point() else value for key, value in state.items()}
        torch.save({"state_dict": nan}, path)
    elif kind == "payload":
        torch.save({"state_dict": {}, "x": Payload()}, path)
    return DltResNetExtractor(str(path)).network


def _hdf5_case(kind, extractor, tmp_path):
    path = tmp_path / "file.hdf5"
    if kind == "no_feats":
        with h5py.File(path, "w") as hdf5:
            hdf5["other"] = numpy.zeros(2)
    else:
        path.write_text("text")
    return extractor.read_data(str(path))


def _failed_download(tmp_path, monkeypatch):
    from bob.learn.pytorch import pretrained

    from .model_server import ModelServer

    monkeypatch.setattr(pretrained, "DATA_DIR", str(tmp_path / "data"))
    with ModelServer({}) as server:
        config = tmp_path / "home" / ".config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "bobrc.toml").write_text(
            f'[bob.learn.pytorch.extractor.audio]\ndrn_url = "{server.url("missing.pth.tar")}"\n'
        )
        return DltResNetExtractor()


def _without_onnxruntime(drn_file, monkeypatch):
    """The extractor asked for ONNX Runtime while the ``fast`` extra is missing."""
    from bob.learn.pytorch import runtimes

    monkeypatch.setattr(runtimes, "onnxruntime_available", lambda: False)
    return DltResNetExtractor(str(drn_file), backend="onnxruntime")


def _without_mnn(drn_file, monkeypatch):
    """The extractor asked for MNN while the ``mnn`` extra is missing."""
    from bob.learn.pytorch import runtimes

    monkeypatch.setattr(runtimes, "mnn_available", lambda: False)
    return DltResNetExtractor(str(drn_file), backend="mnn")


def cases(extractor, tmp_path, drn_file, rn_file, monkeypatch):
    """The call each row describes."""
    (tmp_path / "blocker").write_text("")
    return {
        "empty audio": lambda: extractor((16000, numpy.zeros(0))),
        "audio shorter than 37 frames": lambda: extractor((16000, NOISE[:6159])),
        "NaN or infinite samples": lambda: extractor((16000, numpy.r_[NOISE[:-1], numpy.nan])),
        "samples beyond 1e100": lambda: extractor((16000, numpy.full(16000, 1e120))),
        "multi-channel array": lambda: extractor((16000, numpy.stack([NOISE, NOISE]))),
        "3-D array": lambda: extractor((16000, NOISE[None, None])),
        "a single number as samples": lambda: extractor((16000, 0.5)),
        "``num_classes`` or ``bn_dim``": lambda: DltResNetExtractor(str(drn_file), num_classes="1211"),
        "non-numeric dtype": lambda: extractor((16000, NOISE.astype(str))),
        "Python list of numbers": lambda: extractor((16000, NOISE.tolist())),
        "audio that is not a": lambda: extractor(NOISE),
        "rate of 0, negative, NaN": lambda: extractor((float("nan"), NOISE)),
        "rate with a fraction": lambda: extractor((15999.5, NOISE)),
        "rate below 1000 Hz": lambda: extractor((800, NOISE)),
        "``annotations`` neither": lambda: extractor((16000, NOISE), "annotations"),
        "unknown ``backend`` name": lambda: DltResNetExtractor(str(drn_file), backend="tensorrt"),
        '``backend="onnxruntime"`` without': lambda: _without_onnxruntime(drn_file, monkeypatch),
        '``backend="mnn"`` without': lambda: _without_mnn(drn_file, monkeypatch),
        '``backend="torchscript"``': lambda: DltResNetExtractor(str(drn_file), backend="torchscript"),
        "spectrogram with a number of frequency bins": lambda: extractor.extract_embeddings(
            extractor.network, SPECS[:, :256], 0
        ),
        "negative ``L`` or ``min_length``": lambda: extractor.extract_embeddings(extractor.network, SPECS, -1),
        "``L`` from 1 to 36": lambda: extractor.extract_embeddings(extractor.network, SPECS, 20),
        "checkpoint of the other architecture": lambda: _checkpoint_case("other_architecture", tmp_path, drn_file, rn_file),
        "checkpoint of another ``num_classes``": lambda: _checkpoint_case("other_classes", tmp_path, drn_file, rn_file),
        "truncated checkpoint": lambda: _checkpoint_case("truncated", tmp_path, drn_file, rn_file),
        "empty checkpoint file": lambda: _checkpoint_case("empty", tmp_path, drn_file, rn_file),
        "text file or web page given as checkpoint": lambda: _checkpoint_case("text", tmp_path, drn_file, rn_file),
        "zip archive that is not": lambda: _checkpoint_case("zip", tmp_path, drn_file, rn_file),
        "plain pickle file": lambda: _checkpoint_case("plain_pickle", tmp_path, drn_file, rn_file),
        "checkpoint with NaN or infinite": lambda: _checkpoint_case("nan", tmp_path, drn_file, rn_file),
        "pickle with a code-running payload": lambda: _checkpoint_case("payload", tmp_path, drn_file, rn_file),
        "explicit ``model_file`` that does not exist": lambda: DltResNetExtractor(str(tmp_path / "none.pth")),
        "no model file and a download that fails": lambda: _failed_download(tmp_path, monkeypatch),
        "HDF5 file without a ``feats``": lambda: _hdf5_case("no_feats", extractor, tmp_path),
        "file that is not HDF5": lambda: _hdf5_case("text", extractor, tmp_path),
        "unwritable output path": lambda: extractor.write_data(numpy.zeros((1, 128)), str(tmp_path / "blocker" / "e.h5")),
        "digital silence": lambda: extractor((16000, NOISE * 1e-300)),
        "recording at another rate whose resampling": lambda: extractor((44100, numpy.zeros(52920037, numpy.int16))),
        '``device="cpu:1"``': lambda: DltResNetExtractor(str(drn_file), device="cpu:1"),
        '``device="meta"``': lambda: DltResNetExtractor(str(drn_file), device="meta"),
        '``device="mps"``': lambda: _without_mps(drn_file, monkeypatch),
        "``model_file`` given as ``bytes``": lambda: DltResNetExtractor(bytes(drn_file))((16000, NOISE)),
        "``model_file`` naming a FIFO": lambda: DltResNetExtractor(str(_fifo(tmp_path / "model.pth.tar"))),
        '``backend="onnxruntime"`` in a worker made by ``fork``': lambda: embed_in_forked_child(drn_file, "onnxruntime")[1],
        "eager network in a worker made by ``fork``": lambda: embed_in_forked_child(drn_file, "eager")[1],
    }


def _without_mps(drn_file, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return DltResNetExtractor(str(drn_file), device="mps")


def _fifo(path):
    os.mkfifo(path)
    return path


def test_table_covers_every_case():
    rows = table_rows()
    assert len(rows) == 45
    assert all(len(row) == 3 for row in rows)
    assert len(table_rows(1)) == 55
    assert all(len(row) == 3 for row in table_rows(1))


def _exception_class(name):
    return getattr(package, name, None) or {"ValueError": ValueError, "TypeError": TypeError, "ImportError": ImportError,
                                            "OSError": OSError, "FileNotFoundError": FileNotFoundError,
                                            "MemoryError": MemoryError, "RuntimeError": RuntimeError}[name]


WARNING_LOGGED = "a warning is logged once per recording: "


@pytest.mark.parametrize("row", table_rows(), ids=lambda row: row[0][:40])
def test_documented_outcome(row, drn_extractor, tmp_path, drn_file, rn_file, capsys, caplog, monkeypatch):
    described, outcome, message = row
    known = cases(drn_extractor, tmp_path, drn_file, rn_file, monkeypatch)
    call = next((action for prefix, action in known.items() if described.startswith(prefix)), None)
    assert call is not None, f"no test case for documented row {described!r}"
    if outcome == "accepted":
        with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch"):
            assert call().shape == (1, 128)
        if message.startswith(WARNING_LOGGED):
            logged = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
            assert len(logged) == 1 and message[len(WARNING_LOGGED) :] in logged[0]
        return
    with pytest.raises(_exception_class(outcome.strip("`"))) as error:
        call()
    assert message in str(error.value)
    assert "payload ran" not in capsys.readouterr().out


@pytest.mark.parametrize("row", table_rows(1), ids=lambda row: row[0][:40])
def test_documented_outcome_around_the_extractor(row, tmp_path, drn_file, isolated_settings, server, monkeypatch):
    """Rows of the second table: exceptions, exit statuses of ``bob pytorch``, or a description of what was kept."""
    from . import robustness_cases

    described, outcome, message = row
    message = message.strip("`")
    known = robustness_cases.cases(tmp_path, drn_file, isolated_settings, server, monkeypatch)
    call = next((action for prefix, action in known.items() if described.startswith(prefix)), None)
    assert call is not None, f"no test case for documented row {described!r}"
    if outcome == "accepted":
        assert message in call()
    elif outcome.startswith("exit status "):
        status, text = call()
        assert (status, message in text) == (int(outcome.split()[-1]), True), text
    else:
        with pytest.raises(_exception_class(outcome.strip("`"))) as error:
            call()
        assert message in str(error.value)
