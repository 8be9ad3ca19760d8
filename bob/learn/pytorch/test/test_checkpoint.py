"""Reading weight files safely (``weights_only``, numpy scalars allowed for one read) and loading them strictly."""
import io
import pickle
from pathlib import Path

import numpy
import pytest
import torch

from bob.learn.pytorch import CheckpointError, UnsafeCheckpointError
from bob.learn.pytorch.checkpoint import clean_state_dict, load_state_dict_strictly, read_checkpoint
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor

from .model_server import Payload


# -- safe loading ---------------------------------------------------------------------------------


def evil_checkpoint(path: Path, sentinel: Path, legacy: bool) -> Path:
    buffer = io.BytesIO()
    torch.save(
        {"state_dict": {"module.em.bias": torch.zeros(128)}, "hook": Payload(sentinel)},
        buffer,
        _use_new_zipfile_serialization=not legacy,
    )
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, legacy):
    sentinel = tmp_path / "payload-ran"
    model = evil_checkpoint(tmp_path / "evil.pth.tar", sentinel, legacy)
    with pytest.raises(UnsafeCheckpointError) as caught:
        read_checkpoint(model)
    assert "posix.mkdir" in str(caught.value) and "trust_checkpoint=True" in str(caught.value)
    extractor = DltResNetExtractor(str(model))  # construction does not read the file
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=True"):
        extractor.network
    assert not sentinel.exists()


def test_trust_checkpoint_is_the_explicit_opt_in(tmp_path):
    sentinel = tmp_path / "payload-ran"
    model = evil_checkpoint(tmp_path / "evil.pth.tar", sentinel, legacy=False)
    content = read_checkpoint(model, trust=True)
    assert sentinel.is_dir()  # full unpickling ran the payload: only for trusted files
    assert list(content["state_dict"]) == ["module.em.bias"]


def test_numpy_scalars_load_without_a_process_wide_change(checkpoint):
    def process_wide():  # torch keeps them in a set: compare without order
        return {entry if not isinstance(entry, tuple) else entry[1] for entry in torch.serialization.get_safe_globals()}

    before = process_wide()
    content = read_checkpoint(checkpoint("rn34", "numpy_scalar"))
    assert isinstance(content["best_prec1"], numpy.float64)
    assert len(clean_state_dict(content)) == 240
    after = process_wide()
    assert after == before
    assert not any("numpy" in str(entry) for entry in after)
    with pytest.raises(pickle.UnpicklingError):  # without the scoped allow-list, torch refuses the file
        torch.load(checkpoint("rn34", "numpy_scalar"), weights_only=True)


def test_numpy_dtype_loads(tmp_path):
    model = tmp_path / "dtype.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(2)}, "dtype": numpy.dtype("float32"), "acc": numpy.float32(0.5)}, model)
    content = read_checkpoint(model)
    assert content["dtype"] == numpy.dtype("float32") and content["acc"] == numpy.float32(0.5)


# -- strict loading ------------------------------------------------------------------------------


def test_strict_loading_names_every_problem_and_asks_for_the_hint_only_then():
    network = torch.nn.Linear(3, 2)
    asked = []

    def hint() -> str:
        asked.append(True)
        return "Try the other network."

    load_state_dict_strictly(network, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, "good.pth", hint)
    assert asked == [] and float(network.weight.sum()) == 6.0
    with pytest.raises(CheckpointError) as caught:
        load_state_dict_strictly(network, {"weight": torch.ones(3, 3), "extra": torch.zeros(1)}, "bad.pth", hint)
    assert str(caught.value) == (
        "bad.pth does not fit Linear: missing keys: bias; unexpected keys: extra; shape mismatches: weight "
        "(file (3, 3), network (2, 3)). Try the other network."
    )
    assert asked == [True]
    assert float(network.weight.sum()) == 6.0  # nothing was copied


def test_clean_state_dict_unwraps_strips_and_refuses_what_is_not_a_state_dict():
    cleaned = clean_state_dict({"state_dict": {"module.a": torch.ones(1), "b": torch.zeros(1)}, "epoch": 3})
    assert list(cleaned) == ["a", "b"]
    with pytest.raises(CheckpointError, match="entry 'a' holds int, not a tensor"):
        clean_state_dict({"a": 1}, source="x.pth")
    with pytest.raises(CheckpointError, match=r"holds NaN or infinite values in 1 tensor\(s\) \(a\)"):
        clean_state_dict({"a": torch.tensor([float("nan")])}, source="x.pth")
