"""The suite's own builder of reference checkpoints, and the golden data it stands on, are intact."""
import hashlib
import re
import subprocess
import sys
from collections import OrderedDict

import numpy
import pytest
import torch

from .conftest import REPO
from .reference_checkpoints import DATA, DIGESTS, VARIANTS, reference_state_dict, tensor_digest

# the digests of the oracle's own builder, as it printed them
ORACLE_DIGESTS = {
    "drn34": "cf5390dff4fc1cdfa7c8203fd84636bad13f40d3ea8da9ace192c79ba09d7682",
    "rn34": "8eeeba3a231a3c1a8c44571fc420406d9bbacee45b7f1f8f762936b320ea1e59",
}


@pytest.mark.parametrize("network", sorted(ORACLE_DIGESTS))
def test_builder_reproduces_the_oracle_tensors(network):
    assert DIGESTS[network] == ORACLE_DIGESTS[network]
    assert tensor_digest(reference_state_dict(network)) == ORACLE_DIGESTS[network]


def test_another_seed_gives_other_random_tensors_but_the_same_batch_norm():
    reference, other = reference_state_dict("rn34"), reference_state_dict("rn34", seed=7)
    assert list(reference) == list(other)
    assert not torch.equal(reference["module.conv1.weight"], other["module.conv1.weight"])
    assert torch.equal(reference["module.bn1.running_var"], other["module.bn1.running_var"])


def test_weights_are_uniform_within_the_fan_in_bound():
    state = reference_state_dict("drn34")
    weight, bias = state["module.fc.weight"], state["module.fc.bias"]
    assert weight.dtype == torch.float32 and weight.shape == (1211, 1024)
    assert weight.abs().max() <= (6 / 1024) ** 0.5 and weight.abs().max() > 0.9 * (6 / 1024) ** 0.5
    assert bias.abs().max() <= 1024**-0.5 and bias.abs().max() > 0.9 * 1024**-0.5


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_holds_the_same_tensors(checkpoint, variant):
    payload = torch.load(checkpoint("rn34", variant), weights_only=False)
    state = payload if variant == "bare" else payload["state_dict"]
    if variant == "no_prefix":
        assert not any(key.startswith("module.") for key in state)
        state = OrderedDict((f"module.{key}", value) for key, value in state.items())
    assert tensor_digest(state) == ORACLE_DIGESTS["rn34"]
    if variant != "bare":
        assert payload["arch"] == "resnet34" and payload["epoch"] == 30
        assert type(payload["best_prec1"]) is (numpy.float64 if variant == "numpy_scalar" else float)


def test_the_dltresnet_file_is_in_torchs_legacy_format(drn_file, rn_file):
    assert not drn_file.read_bytes().startswith(b"PK")  # legacy pickle, as written in 2019
    assert rn_file.read_bytes().startswith(b"PK")  # zip


def test_command_line_writes_a_file_and_prints_its_digest(tmp_path):
    output = tmp_path / "drn34.pth.tar"
    finished = subprocess.run(
        [sys.executable, "-m", "bob.learn.pytorch.test.reference_checkpoints", "drn34", str(output)],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    assert finished.stdout.split() == [ORACLE_DIGESTS["drn34"], str(output)]
    assert output.stat().st_size > 90e6


def test_unknown_networks_and_variants_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown reference network 'vgg'; choose one of \['drn34', 'rn34'\]"):
        reference_state_dict("vgg")
    with pytest.raises(ValueError, match="unknown variant 'zip'"):
        from .reference_checkpoints import write_reference_checkpoint

        write_reference_checkpoint("drn34", tmp_path / "x.pth.tar", "zip")
    assert not (tmp_path / "x.pth.tar").exists()


def golden_table():
    """``{file name: (bytes, sha256)}`` from the table of data/README.md."""
    rows = re.findall(r"^\| `([^`]+)` \| (\d+) \| ([0-9a-f]{64}) \|$", (DATA / "README.md").read_text(), re.M)
    return {name: (int(size), digest) for name, size, digest in rows}


def test_golden_files_are_the_copies_the_readme_lists():
    table = golden_table()
    on_disk = {path.name for path in DATA.iterdir() if path.suffix in (".npz", ".json")}
    assert set(table) == on_disk
    for name, (size, digest) in table.items():
        content = (DATA / name).read_bytes()
        assert (len(content), hashlib.sha256(content).hexdigest()) == (size, digest), name


def test_the_repository_refers_to_nothing_outside_it():
    """No file tracked by git names the oracle's folder or notes: a clone must work on its own."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git work tree")
    patterns = [r"\.\./" + "shared", "FAC" + "TS", "BOB_LEARN_PYTORCH_" + "SHARED"]
    arguments = [argument for pattern in patterns for argument in ("-e", pattern)]
    found = subprocess.run(["git", "grep", "-n", *arguments], cwd=REPO, capture_output=True, text=True)
    assert found.returncode == 1, found.stdout
