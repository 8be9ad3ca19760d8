"""A model file carrying a code-running pickle never runs, whatever path loads it.

Each payload would create a sentinel file; every test checks that it does not exist.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch

from bob.learn.pytorch import UnsafeCheckpointError
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor, ResNetExtractor
from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

from .conftest import SPEECH

BOB = Path(sys.executable).with_name("bob")
WAV = SPEECH / "librivox_0880.wav"


class Payload:
    """Unpickles into a call of os.mkdir(sentinel)."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.mkdir, (self.sentinel,))


@pytest.fixture(params=["zip", "legacy"])
def hostile(request, tmp_path, drn_file):
    """A real DltResNet checkpoint with a payload beside the weights, in both torch.save formats."""
    sentinel = tmp_path / "payload-ran"
    content = torch.load(drn_file, weights_only=True)
    content["extra"] = Payload(sentinel)
    path = tmp_path / f"hostile-{request.param}.pth.tar"
    torch.save(content, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, sentinel


def _env(home):
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "BOBRC": str(home / ".bobrc")}


@pytest.mark.parametrize("cls", [DltResNetExtractor, ResNetExtractor])
def test_extractor_refuses(hostile, cls):
    path, sentinel = hostile
    with pytest.raises(UnsafeCheckpointError, match="posix.mkdir.*trust_checkpoint=True"):
        cls(str(path)).network
    assert not sentinel.exists()


def test_extractor_in_test_mode_never_opens_the_file(hostile):
    path, sentinel = hostile
    DltResNetExtractor(str(path), test=True)
    assert not sentinel.exists()


def test_bob_transformer_refuses(hostile):
    path, sentinel = hostile
    transformer = AudioEmbeddingTransformer(model_file=str(path))
    with pytest.raises(UnsafeCheckpointError):
        transformer.transform([(16000, numpy.zeros(16000, numpy.int16))])
    assert not sentinel.exists()


def test_command_line_refuses_an_explicit_model(hostile, tmp_path, isolated_settings):
    path, sentinel = hostile
    output = tmp_path / "out.h5"
    result = subprocess.run(
        [str(BOB), "pytorch", "extract-audio", str(WAV), "-o", str(output), "--model", str(path), "-q"],
        capture_output=True, text=True, env=_env(isolated_settings), timeout=300,
    )
    assert result.returncode != 0
    assert "trust" in result.stderr and "Traceback" not in result.stderr
    assert not sentinel.exists()
    assert not output.exists()


def test_command_line_refuses_a_model_from_the_user_settings(hostile, tmp_path, isolated_settings):
    path, sentinel = hostile
    env = _env(isolated_settings)
    subprocess.run(
        [str(BOB), "config", "set", "bob.learn.pytorch.extractor.audio.drn_modelpath", str(path)],
        check=True, capture_output=True, env=env, timeout=120,
    )
    output = tmp_path / "out.npy"
    result = subprocess.run(
        [str(BOB), "pytorch", "extract-audio", str(WAV), "-o", str(output), "-q"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode != 0
    assert "trust" in result.stderr and "Traceback" not in result.stderr
    assert not sentinel.exists()
    assert not output.exists()
