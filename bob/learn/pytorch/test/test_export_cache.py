"""The runtime cache: keyed by everything that changes an export, whole or absent, only the very file that passed."""
import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bob.learn.pytorch import export_cache, onnx_export, pretrained
from bob.learn.pytorch.errors import SettingsError
from bob.learn.pytorch.export_cache import Checked, cache_key, cache_location, checked_model, entry_name

from .conftest import REPO


class Exports:
    """An export that counts its calls and returns ``model``, and a check that passes unless told to fail."""

    def __init__(self, model: bytes = b"frame body v1", passes: bool = True):
        self.model, self.passes, self.exported, self.checked = model, passes, 0, []

    def export(self) -> bytes:
        self.exported += 1
        return self.model

    def check(self, model: bytes, fresh: bool) -> Checked:
        self.checked.append((model, fresh))
        return Checked(model, self.passes and model == self.model, {"frames": 1e-6, "embedding": 2e-7})


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return pretrained.get("resnet34").build(1211, 128).eval()


def entries(location) -> dict:
    """The files of the entries' folder, by name."""
    folder = location.entries
    return {path.name: path for path in folder.iterdir()} if folder.is_dir() else {}


def run(network, exports, bins=257):
    return checked_model(network, bins, cache_location(), exports.export, exports.check)


# -- where ------------------------------------------------------------------------------------


def test_the_default_folder_follows_xdg_cache_home_else_home(isolated_settings, monkeypatch):
    assert cache_location() == (isolated_settings / ".cache" / "bob.learn.pytorch", "default ($XDG_CACHE_HOME, else ~/.cache)")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert cache_location().folder == isolated_settings / ".cache" / "bob.learn.pytorch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_location().entries == isolated_settings / ".cache" / "bob.learn.pytorch" / "frame-body"


def test_the_folder_setting_is_honoured_and_the_variable_comes_first(isolated_settings, tmp_path, monkeypatch, network):
    (isolated_settings / ".config").mkdir()
    (isolated_settings / ".config" / "bobrc.toml").write_text(f'[bob.learn.pytorch]\nruntime_cache = "{tmp_path}/set"\n')
    location = cache_location()
    assert location.folder == tmp_path / "set" and "setting bob.learn.pytorch.runtime_cache in" in location.source
    run(network, Exports())
    assert sorted(entries(location)) == [".lock", f"{entry_name(cache_key(network, 257))}.json", f"{entry_name(cache_key(network, 257))}.onnx"]
    assert not (isolated_settings / ".cache").exists()
    monkeypatch.setenv(export_cache.CACHE_ENVIRONMENT, str(tmp_path / "variable"))
    assert cache_location() == (tmp_path / "variable", "environment variable BOB_LEARN_PYTORCH_RUNTIME_CACHE")
    monkeypatch.setenv(export_cache.CACHE_ENVIRONMENT, "~/elsewhere")
    assert cache_location().folder == isolated_settings / "elsewhere"


@pytest.mark.parametrize("value", ['"off"', '"OFF"', "false", '"no"'])
def test_cache_off_by_setting_writes_nothing(isolated_settings, network, value):
    (isolated_settings / ".config").mkdir()
    (isolated_settings / ".config" / "bobrc.toml").write_text(f"[bob.learn.pytorch]\nruntime_cache = {value}\n")
    exports = Exports()
    assert cache_location().folder is None
    for _ in range(2):
        assert run(network, exports).value == b"frame body v1"
    assert exports.exported == 2 and not (isolated_settings / ".cache").exists()
    assert sorted(path.name for path in isolated_settings.rglob("*")) == [".config", "bobrc.toml"]


def test_cache_off_by_environment_writes_nothing(isolated_settings, network, monkeypatch):
    monkeypatch.setenv(export_cache.CACHE_ENVIRONMENT, "off")
    exports = Exports()
    run(network, exports)
    run(network, exports)
    assert exports.exported == 2 and list(isolated_settings.iterdir()) == []


@pytest.mark.parametrize("value", ['"relative/folder"', "3", '""'])
def test_a_folder_setting_that_is_not_an_absolute_folder_is_refused(isolated_settings, value):
    (isolated_settings / ".config").mkdir()
    (isolated_settings / ".config" / "bobrc.toml").write_text(f"[bob.learn.pytorch]\nruntime_cache = {value}\n")
    with pytest.raises(SettingsError, match=r"setting bob.learn.pytorch.runtime_cache in .*bobrc.toml must be an absolute folder or 'off', got"):
        cache_location()


# -- the key ----------------------------------------------------------------------------------


def test_the_key_changes_with_each_component(network, monkeypatch):
    base = cache_key(network, 257)
    assert cache_key(network, 257) == base and entry_name(base) == entry_name(cache_key(network, 257))
    assert len(entry_name(base)) == 32
    changed = {"bins": cache_key(network, 272)}
    original_class = type(network)
    network.__class__ = type("Renamed", (original_class,), {})
    try:
        changed["architecture"] = cache_key(network, 257)
    finally:
        network.__class__ = original_class
    replacements = {
        "layers": (network.conv1, "extra_repr", lambda: "another layer"),
        "versions": (export_cache, "_versions", lambda: {**base["versions"], "onnxruntime": "0.0.1"}),
        "opset": (onnx_export, "OPSET", 17),
        "exporter options": (onnx_export, "_EXPORTER_OPTIONS", {**onnx_export._EXPORTER_OPTIONS, "optimize": False}),
        "source files": (export_cache, "_file_digest", lambda path: hashlib.sha256(path.encode()).hexdigest()),
        "format": (export_cache, "FORMAT", 2),
    }
    for component, (owner, attribute, value) in replacements.items():
        with monkeypatch.context() as patch:
            patch.setattr(owner, attribute, value)
            changed[component] = cache_key(network, 257)
    weight = network.conv1.weight
    saved = weight[0, 0, 0, 0].clone()
    with torch.no_grad():
        weight[0, 0, 0, 0] = torch.nextafter(saved, saved + 1)  # one weight, by the smallest step there is
        changed["weights"] = cache_key(network, 257)
        weight[0, 0, 0, 0] = saved
    assert cache_key(network, 257) == base
    names = {component: entry_name(key) for component, key in changed.items()}
    assert entry_name(base) not in names.values() and len(set(names.values())) == len(names), names


def test_the_weight_digest_covers_every_tensor_and_its_dtype(network):
    digest = export_cache.weights_digest(network)
    assert digest == export_cache.weights_digest(network) and len(digest) == 64
    state = network.state_dict()
    assert "layer1.0.bn1.num_batches_tracked" in state  # buffers are part of the state
    half = pretrained.get("resnet34").build(1211, 128).eval()
    half.load_state_dict(state)
    assert export_cache.weights_digest(half) == digest
    assert export_cache.weights_digest(half.double()) != digest


def test_the_key_imports_neither_the_exporter_nor_the_runtime(network):
    code = textwrap.dedent(
        """
        import sys, torch
        from bob.learn.pytorch import export_cache, pretrained
        export_cache.cache_key(pretrained.get("resnet34").build(1211, 128).eval(), 257)
        print(sorted(name for name in ("torch.onnx", "onnx", "onnxscript", "onnxruntime") if name in sys.modules))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"


# -- entries ----------------------------------------------------------------------------------


def test_an_entry_is_written_once_then_read_and_checked_on_a_short_probe(network):
    first, second = Exports(), Exports()
    assert run(network, first).value == b"frame body v1" and first.checked == [(b"frame body v1", True)]
    assert run(network, second).value == b"frame body v1"
    assert (second.exported, second.checked) == (0, [(b"frame body v1", False)])
    name = entry_name(cache_key(network, 257))
    index = json.loads((cache_location().entries / f"{name}.json").read_text())
    assert index == {
        "key": cache_key(network, 257),
        "sha256": hashlib.sha256(b"frame body v1").hexdigest(),
        "bytes": 13,
        "check": {"frames": 1e-6, "embedding": 2e-7},
    }
    assert (cache_location().entries / f"{name}.onnx").read_bytes() == b"frame body v1"


def test_a_model_that_fails_its_check_is_not_kept(network):
    exports = Exports(passes=False)
    checked = run(network, exports)
    assert not checked.passed and checked.value == b"frame body v1"
    assert sorted(entries(cache_location())) == [".lock"]


def _written(network, model: bytes = b"frame body v1"):
    run(network, Exports(model))
    name = entry_name(cache_key(network, 257))
    return cache_location().entries / f"{name}.onnx", cache_location().entries / f"{name}.json"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda model, index: model.write_bytes(model.read_bytes()[:5]), id="truncated model"),
        pytest.param(lambda model, index: model.write_bytes(b"frame body v2"), id="same size, other bytes"),
        pytest.param(lambda model, index: index.write_text(index.read_text()[:40]), id="truncated index"),
        pytest.param(lambda model, index: index.unlink(), id="model without index"),
        pytest.param(lambda model, index: model.unlink(), id="index without model"),
        pytest.param(
            lambda model, index: index.write_text(json.dumps({**json.loads(index.read_text()), "sha256": "0" * 64})),
            id="index naming another digest",
        ),
        pytest.param(
            lambda model, index: index.write_text(json.dumps({**json.loads(index.read_text()), "key": {"format": 0}})),
            id="index of another key",
        ),
    ],
)
def test_a_damaged_or_stale_entry_is_not_used_and_is_rebuilt(network, damage, caplog):
    model, index = _written(network)
    damage(model, index)
    exports = Exports()
    with caplog.at_level(logging.INFO, logger="bob.learn.pytorch.export_cache"):
        assert run(network, exports).value == b"frame body v1"
    assert exports.exported == 1 and exports.checked == [(b"frame body v1", True)]
    assert model.read_bytes() == b"frame body v1"
    assert json.loads(index.read_text())["sha256"] == hashlib.sha256(b"frame body v1").hexdigest()
    assert sorted(entries(cache_location())) == sorted([".lock", model.name, index.name])


def test_an_entry_that_fails_its_check_here_is_exported_again(network, caplog):
    model, _ = _written(network, b"frame body v0")  # a file that passed elsewhere and fails here
    exports = Exports(b"frame body v1")
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch.export_cache"):
        assert run(network, exports).value == b"frame body v1"
    assert exports.checked == [(b"frame body v0", False), (b"frame body v1", True)]
    assert "fails its check here; exporting again" in caplog.text
    assert model.read_bytes() == b"frame body v1"


def test_an_unwritable_cache_is_reported_once_and_the_export_still_used(isolated_settings, network, caplog, monkeypatch):
    blocker = isolated_settings / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(export_cache.CACHE_ENVIRONMENT, str(blocker / "cache"))
    monkeypatch.setattr(export_cache, "_reported", set())
    exports = Exports()
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch.export_cache"):
        assert run(network, exports).passed and run(network, exports).passed
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "the export is used without being kept" in warnings[0], warnings
    assert exports.exported == 2 and blocker.read_text() == "not a folder"


def test_a_failed_write_leaves_no_temporary_and_no_index(network, monkeypatch, caplog):
    monkeypatch.setattr(export_cache, "_reported", set())
    real = export_cache.atomic.replacing
    calls = []

    def full_disk_at_the_index(path, what="a file"):
        calls.append(Path(path).suffix)
        if Path(path).suffix == ".json":
            raise OSError(28, "No space left on device")
        return real(path, what)

    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="bob.learn.pytorch.export_cache"):
        patch.setattr(export_cache.atomic, "replacing", full_disk_at_the_index)
        assert run(network, Exports()).passed
    assert calls == [".onnx", ".json"] and "No space left on device" in caplog.text
    assert sorted(name.rsplit(".", 1)[-1] for name in entries(cache_location())) == ["lock", "onnx"]
    exports = Exports()
    run(network, exports)  # a model without its index is a miss
    assert exports.exported == 1


def test_two_processes_building_the_same_entry_both_succeed_export_once_and_leave_one_entry(tmp_path, isolated_settings):
    log = tmp_path / "exports.log"
    code = textwrap.dedent(
        f"""
        import os, sys, time, torch
        from bob.learn.pytorch import export_cache
        torch.manual_seed(0)
        network = torch.nn.Linear(3, 2)

        def export():
            with open({str(log)!r}, "a") as stream:
                stream.write(f"{{os.getpid()}}\\n")
            time.sleep(1.5)
            return b"the model"

        check = lambda model, fresh: export_cache.Checked(model, True, {{}})
        checked = export_cache.checked_model(network, 257, export_cache.cache_location(), export, check)
        print(checked.value.decode())
        """
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=environment, cwd=REPO) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert outputs == ["the model\n", "the model\n"]
    assert len(log.read_text().split()) == 1  # the second process waited and read the first one's entry
    files = sorted(path.name for path in cache_location().entries.iterdir())
    assert len(files) == 3 and files[0] == ".lock" and {name.rsplit(".", 1)[1] for name in files[1:]} == {"json", "onnx"}


def test_contents_and_clear_count_and_remove_only_entries(network, isolated_settings):
    location = cache_location()
    assert export_cache.contents(location) == (0, 0) and export_cache.clear(location) == 0
    model, index = _written(network)
    other = location.entries / "notes.txt"
    other.write_text("mine")
    stale = location.entries / f".{model.name}.host.1.{'0' * 32}.partial"
    stale.write_bytes(b"half")
    assert export_cache.contents(location) == (1, model.stat().st_size + index.stat().st_size)
    assert export_cache.clear(location) == 3
    assert sorted(entries(location)) == [".lock", "notes.txt"]
    assert export_cache.contents(location) == (0, 0)


def test_the_cache_keeps_the_entries_used_most_recently(network, monkeypatch):
    monkeypatch.setattr(export_cache, "MAX_ENTRIES", 3)
    folder = cache_location().entries
    names = []
    for step, bins in enumerate((257, 258, 259, 260)):
        if bins == 260:
            again = Exports()
            checked_model(network, 257, cache_location(), again.export, again.check)  # the first, read again
            assert again.exported == 0 and (folder / f"{names[0]}.json").stat().st_mtime > 1e9 + 2
        checked_model(network, bins, cache_location(), Exports().export, Exports().check)
        names.append(entry_name(cache_key(network, bins)))
        index = folder / f"{names[-1]}.json"
        if bins != 260:
            os.utime(index, (1e9 + step, 1e9 + step))
    kept = sorted(path.stem for path in folder.glob("*.json"))
    assert kept == sorted([names[0], names[2], names[3]])
    assert sorted(path.stem for path in folder.glob("*.onnx")) == kept
