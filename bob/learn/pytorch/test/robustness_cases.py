"""The calls behind the rows of the second table of doc/robustness.rst (files, downloads, command line).

Each case returns what the row's outcome names: nothing (it raises), a text
describing what was kept ("accepted"), or ``(exit status, standard error)``.
"""
import multiprocessing
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import numpy
import torch
from click.testing import CliRunner

from bob.learn.pytorch.atomic import temporary_name
from bob.learn.pytorch.download import DownloadOptions, download_model
from bob.learn.pytorch.io import write_embedding
from bob.learn.pytorch.weights import (
    download_options,
    ensure_model_file,
    resolve_model_file,
    resolve_model_url,
    resolve_sha256,
)
from bob.learn.pytorch import pretrained
from bob.learn.pytorch import inputs, outputs
from bob.learn.pytorch.script.pytorch import pytorch

from .conftest import SPEECH, fill, plant_link, toy_network, toy_record
from .model_server import ModelServer, fetch_in_process

DRN = pretrained.get("dltresnet34")
WAV = SPEECH / "flite_kal_u1.wav"
OTHER_WAV = SPEECH / "fest_ked_u2.wav"


def _options(**kwargs):
    values = dict(connect_timeout=2.0, read_timeout=2.0, attempts=1, backoff=0, progress=False)
    values.update(kwargs)
    return DownloadOptions(**values)


def _settings(home: Path, **values) -> None:
    config = home / ".config"
    config.mkdir(parents=True, exist_ok=True)
    lines = ["[bob.learn.pytorch.extractor.audio]"] + [f"{key} = {value}" for key, value in values.items()]
    (config / "bobrc.toml").write_text("\n".join(lines) + "\n")


def _download(server, folder: Path, mode: str, **options):
    server.then(mode)
    return download_model(DRN, str(folder / "drn34.pth.tar"), server.url("drn34.pth.tar"), options=_options(**options))


def _extract(*args):
    result = CliRunner().invoke(pytorch, ["extract-audio"] + [str(arg) for arg in args], catch_exceptions=False)
    return result.exit_code, result.stderr


def _non_utf8_folder(parent: Path, name: bytes) -> Path:
    folder = Path(os.fsdecode(bytes(parent) + b"/" + name))
    folder.mkdir()
    return folder


def _deadline_through_settings(home, server, folder):
    _settings(home, download_deadline=0.5, download_min_rate=0)
    server.then("drip")
    return download_model(DRN, str(folder / "drn34.pth.tar"), server.url("drn34.pth.tar"), options=download_options())


def _through_a_dripping_proxy(server, folder, monkeypatch):
    with ModelServer(server.files) as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", proxy.url(""))
        proxy.then("drip")
        return download_model(DRN, str(folder / "drn34.pth.tar"), server.url("drn34.pth.tar"), options=_options(deadline=1))


def _waiting_for_a_stopped_download(server, folder):
    """A process holds the lock of the same file, downloading from a dripping server, and is stopped."""
    target, spawn = folder / "drn34.pth.tar", multiprocessing.get_context("spawn")
    server.then("drip")
    report = spawn.Queue()
    holder = spawn.Process(target=fetch_in_process, args=(server.url("drn34.pth.tar"), str(target), 60.0, report))
    holder.start()
    try:
        while not server.requests and holder.is_alive():
            time.sleep(0.05)
        assert holder.is_alive(), report.get(timeout=10)
        os.kill(holder.pid, signal.SIGSTOP)
        return download_model(DRN, str(target), server.url("drn34.pth.tar"), options=_options(deadline=1))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=30)


def _other_target_kept(server, folder):
    """The live download of ``drn34.pth.tar.v2`` (by the parent process) has its temporary file beside."""
    other = temporary_name(folder / "drn34.pth.tar.v2")
    other = other.with_name(other.name.replace(f".{os.getpid()}.", f".{os.getppid()}."))
    other.write_bytes(b"half")
    download_model(DRN, str(folder / "drn34.pth.tar"), server.url("drn34.pth.tar"), options=_options())
    return "the other download's temporary file kept" if other.exists() else "removed"


def _longest_name(folder):
    target = folder / ("e" * 252 + ".h5")
    write_embedding(numpy.zeros((1, 128)), target)
    return "written, nothing else left" if [path.name for path in folder.iterdir()] == [target.name] else "left"


def _credentials(server, folder):
    server.then("404")
    url = server.url("drn34.pth.tar").replace("http://", "http://alice:s3cret@")
    return download_model(DRN, str(folder / "drn34.pth.tar"), url, options=_options())


def _special_model_setting(home, folder, server):
    fifo = folder / "drn34.pth.tar"
    os.mkfifo(fifo)
    _settings(home, drn_modelpath=f'"{fifo}"', drn_url=f'"{server.url("drn34.pth.tar")}"')
    return ensure_model_file(DRN)


def _fifo_output(folder):
    os.mkfifo(folder / "e.h5")
    write_embedding(numpy.zeros((1, 128)), folder / "e.h5")


def _mode_kept(folder):
    target = folder / "e.h5"
    target.write_text("old")
    target.chmod(0o600)
    write_embedding(numpy.zeros((1, 128)), target)
    return f"mode {oct(stat.S_IMODE(target.stat().st_mode))} kept"


def _link_kept(folder):
    real, link = folder / "real.h5", folder / "link.h5"
    real.write_text("old")
    link.symlink_to(real)
    write_embedding(numpy.ones((1, 128)), link)
    changed = real.read_bytes()[:4] == b"\x89HDF"
    return "still a link, to the new file" if link.is_symlink() and changed else "replaced the link"


def _stale_removed(folder):
    target = folder / "e.h5"
    stale = temporary_name(target)
    stale = stale.with_name(stale.name.replace(f".{os.getpid()}.", ".999999999."))
    stale.write_text("half")
    write_embedding(numpy.zeros((1, 128)), target)
    return "removed by the next write" if not stale.exists() else "left"


def _failed_run(folder, drn_file):
    bad = folder / "junk.wav"
    bad.write_bytes(b"no audio")
    status, errors = _extract(bad, "-o", folder / "new" / "o.h5", "--model", drn_file)
    return status, errors + ("folder removed" if not (folder / "new").exists() else "folder left")


def _clash(folder, drn_file):
    (folder / "rec" / "sub").mkdir(parents=True)
    shutil.copy(WAV, folder / "rec" / "sub.wav")
    shutil.copy(OTHER_WAV, folder / "rec" / "sub" / "x.wav")
    return _extract(folder / "rec", "-o", folder / "o.h5", "--model", drn_file)


def _model_in_non_utf8_folder(folder, drn_file):
    model = _non_utf8_folder(folder, b"mod\xe8les") / "drn34.pth.tar"
    shutil.copy(drn_file, model)
    return _extract(WAV, "-o", folder / "o.h5", "--model", model)


def _input_in_non_utf8_folder(folder, drn_file):
    recording = _non_utf8_folder(folder, b"caf\xe9") / "a.wav"
    shutil.copy(WAV, recording)
    return _extract(recording, OTHER_WAV, "-o", folder / "o.h5", "--model", drn_file)


def _fifo_input(folder, drn_file):
    os.mkfifo(folder / "live.wav")
    return _extract(folder / "live.wav", WAV, "-o", folder / "o.h5", "--model", drn_file)


def _fifo_out(folder, drn_file):
    os.mkfifo(folder / "o.h5")
    return _extract(WAV, "-o", folder / "o.h5", "--model", drn_file)


def _linked_folders(folder):
    (folder / "corpus" / "real").mkdir(parents=True)
    (folder / "elsewhere").mkdir()
    shutil.copy(WAV, folder / "corpus" / "real" / "a.wav")
    shutil.copy(OTHER_WAV, folder / "elsewhere" / "b.wav")
    (folder / "corpus" / "linked").symlink_to(folder / "elsewhere")
    (folder / "corpus" / "real" / "loop").symlink_to(folder / "corpus")
    items, problems = inputs.collect_inputs([str(folder / "corpus")])
    return ", ".join(item.name for item in items) + (f" ({len(problems)} problems)" if problems else "")


def _list_file(folder):
    for name in ("a.wav", "take#2.wav", " lead.wav"):
        shutil.copy(WAV, folder / name)
    lines = ["# recordings", "a.wav   # first", "take#2.wav", "\\ lead.wav"]
    (folder / "list.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    items, problems = inputs.collect_inputs([str(folder / "list.txt")])
    return "names " + ", ".join(item.name for item in items) + (f" ({len(problems)} problems)" if problems else "")


def _settings_file(home: Path, kind: str):
    path = home / ".config" / "bobrc.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path.name)
    else:
        path.write_text("[bob.learn\n")
    return resolve_model_file(DRN)


def _register(**changes):
    try:
        return pretrained.register(toy_record(**changes))
    finally:
        pretrained.unregister(toy_record().name)


def _unpicklable_impostor(folder):
    import pickle

    from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor
    from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

    weights = folder / "impostor.pth"
    torch.save({"state_dict": toy_network().state_dict()}, weights)
    record = toy_record(name="resnet34", architecture=lambda **kwargs: toy_network(**kwargs))
    return pickle.dumps(AudioEmbeddingTransformer(EmbeddingExtractor(record, weights, backend="eager")))
def _disk_filled_during_the_work(folder, drn_file, monkeypatch):
    import subprocess

    import pytest

    from bob.learn.pytorch.script import pytorch as cli

    disk = folder / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    embed = cli.run_extraction

    def embed_then_fill(*args, **kwargs):
        found = embed(*args, **kwargs)
        fill(disk)
        return found

    monkeypatch.setattr(cli, "run_extraction", embed_then_fill)
    try:
        (disk / "o.h5").write_bytes(b"previous")
        status, errors = _extract(WAV, "-o", disk / "o.h5", "--model", drn_file, "--backend", "eager")
        kept = (disk / "o.h5").read_bytes() == b"previous"
        return status, errors if kept else "previous output lost"
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _npy_output(folder, drn_file):
    status, errors = _extract(WAV, OTHER_WAV, "-o", folder / "o.npy", "--model", drn_file, "--backend", "eager")
    records = numpy.load(folder / "o.npy", allow_pickle=False)
    files = sorted(path.name for path in folder.iterdir())
    return f"{'one file' if files == ['o.npy'] and status == 0 else files}: fields {', '.join(records.dtype.names)}"


def _planted_link(folder, drn_file):
    victim = folder / "root-only"
    victim.write_text("root's")
    shared, _ = plant_link(folder, "o.h5", victim)
    status, errors = _extract(WAV, "-o", shared / "o.h5", "--model", drn_file)
    return status, errors if victim.read_text() == "root's" else "the link was followed"


def _dot_dot_wav(folder, drn_file):
    (folder / "rec").mkdir()
    shutil.copy(WAV, folder / "rec" / "..wav")
    shutil.copy(OTHER_WAV, folder / "rec" / "b.wav")
    status, errors = _extract(folder / "rec", "-o", folder / "o.h5", "--model", drn_file, "--backend", "eager")
    return status, errors + ("" if (folder / "o.h5").exists() else " (nothing written)")


def _too_long_input(folder, drn_file):
    deep = os.path.join(str(folder), *["d" * 200] * (os.pathconf("/", "PC_PATH_MAX") // 200 + 1), "x.wav")
    return _extract(deep, WAV, "-o", folder / "o.h5", "--model", drn_file, "--backend", "eager")


def _cut_short_wav(folder, drn_file):
    content = WAV.read_bytes()
    (folder / "cut.wav").write_bytes(content[: len(content) // 2])
    return _extract(folder / "cut.wav", OTHER_WAV, "-o", folder / "o.h5", "--model", drn_file, "--backend", "eager")


def _wrong_riff_size(folder):
    content = WAV.read_bytes()
    (folder / "x.wav").write_bytes(content[:4] + (len(content)).to_bytes(4, "little") + content[8:])
    return inputs.read_wav(folder / "x.wav")
def _export_onto_its_model(folder: Path, drn_file: Path):
    model = folder / "m.pth.tar"
    shutil.copyfile(drn_file, model)
    link = folder / "link.pth.tar"
    link.symlink_to(model)
    result = CliRunner().invoke(pytorch, ["export", "dltresnet34", "--model", str(model), "-o", str(link)])
    assert model.read_bytes() == drn_file.read_bytes()
    return result.exit_code, result.stderr


def _export_untraceable(folder: Path, drn_file: Path):
    import dataclasses
    import torch

    from .conftest import _untraceable_resnet34

    record = dataclasses.replace(DRN, name="untraceable", title="Untraceable", architecture=_untraceable_resnet34, aliases=())
    pretrained.register(record)
    try:
        model = folder / "u.pth.tar"
        torch.save({"state_dict": record.build().state_dict()}, model)
        result = CliRunner().invoke(pytorch, ["export", "untraceable", "--model", str(model), "-o", str(folder / "u.onnx")])
    finally:
        pretrained.unregister("untraceable")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.exit_code, result.stderr


def _runtimes_built_in_two_threads(drn_file: Path, monkeypatch):
    import threading

    from bob.learn.pytorch.export_cache import CACHE_ENVIRONMENT
    from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor

    monkeypatch.setenv(CACHE_ENVIRONMENT, "off")  # both export
    extractors = [EmbeddingExtractor("dltresnet34", str(drn_file)) for _ in range(2)]
    names = [None, None]
    threads = [threading.Thread(target=lambda i=i: names.__setitem__(i, extractors[i].runtime)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ", ".join(map(str, names))


_CACHED_NETWORK = []


def _cache_run(model: bytes = b"model"):
    """One :func:`checked_model` call for one small network with an export that returns ``model``; says whether it exported."""
    import torch

    from bob.learn.pytorch import export_cache

    if not _CACHED_NETWORK:
        _CACHED_NETWORK.append(torch.nn.Linear(2, 2))

    exported = []

    def export():
        exported.append(model)
        return model

    checked = export_cache.checked_model(
        _CACHED_NETWORK[0], 257, export_cache.cache_location(), export, lambda data, fresh: export_cache.Checked(data, True, {})
    )
    assert checked.value == model
    return "exported again" if exported else "read from the cache"


def _damaged_cache_entry():
    from bob.learn.pytorch import export_cache

    _cache_run()
    folder = export_cache.cache_location().entries
    outcomes = []
    for damage in (lambda data: data[:2], lambda data: data[::-1]):  # truncated; same size, other bytes
        model = next(folder.glob("*.onnx"))
        model.write_bytes(damage(model.read_bytes()))
        outcomes.append(_cache_run())
        outcomes.append(_cache_run())
    return ", ".join(outcomes)


def _unwritable_cache(folder: Path, monkeypatch, caplog_records: list):
    import logging

    from bob.learn.pytorch import export_cache

    blocker = folder / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(export_cache.CACHE_ENVIRONMENT, str(blocker / "cache"))
    monkeypatch.setattr(export_cache, "_reported", set())
    handler = logging.Handler()
    handler.emit = lambda record: caplog_records.append(record.getMessage())
    logger = logging.getLogger("bob.learn.pytorch.export_cache")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever an earlier command's verbosity left on the package's logger
    try:
        outcomes = [_cache_run(), _cache_run()]
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)
    return f"{', '.join(outcomes)}; {len(caplog_records)} warning: {caplog_records[0]}"


def cases(tmp_path: Path, drn_file: Path, home: Path, server, monkeypatch) -> dict:
    """Row prefix → the call it describes."""
    folder = tmp_path / "work"
    folder.mkdir()
    return {
        "download from a server sending one byte": lambda: _deadline_through_settings(home, server, folder),
        "download from a server sending its headers": lambda: _download(server, folder, "drip_headers", deadline=0.5),
        "download through an HTTP proxy": lambda: _through_a_dripping_proxy(server, folder, monkeypatch),
        "download waiting for another process": lambda: _waiting_for_a_stopped_download(server, folder),
        "download of ``drn34.pth.tar`` while": lambda: _other_target_kept(server, folder),
        "output name of 255 bytes": lambda: _longest_name(folder),
        "download slower than": lambda: _download(server, folder, "drip", min_rate=1e9, rate_window=0.2),
        "download with a body without end": lambda: _download(server, folder, "endless", max_bytes=1 << 20),
        "compressed body that expands": lambda: _download(server, folder, "gzip_bomb", max_bytes=1 << 20),
        "``Content-Length`` beyond": lambda: _download(server, folder, "huge_length"),
        "setting ``download_timeout``": lambda: (_settings(home, download_timeout="inf"), download_options()),
        "setting ``drn_sha256``": lambda: (_settings(home, drn_sha256='"abc"'), resolve_sha256(DRN, "http://m/x")),
        "setting ``drn_url``": lambda: (_settings(home, drn_url='"ftp://m/x"'), resolve_model_url(DRN)),
        "download address with a user name": lambda: _credentials(server, folder),
        "setting ``drn_modelpath`` naming a FIFO": lambda: _special_model_setting(home, folder, server),
        "setting ``drn_modelpath`` that is a relative path": lambda: (
            _settings(home, drn_modelpath='"models/drn34.pth.tar"'), resolve_model_file(DRN)
        ),
        "setting ``drn_modelpath`` naming an environment variable": lambda: (
            monkeypatch.delenv("NO_SUCH", raising=False),
            _settings(home, drn_modelpath='"${NO_SUCH}/drn34.pth.tar"'),
            resolve_model_file(DRN),
        ),
        "``bobrc.toml`` that is a folder": lambda: _settings_file(home, "folder"),
        "``bobrc.toml`` that is a symbolic link to itself": lambda: _settings_file(home, "loop"),
        "``bobrc.toml`` that is not valid TOML": lambda: _settings_file(home, "invalid"),
        "network record registered with a name": lambda: _register(name=3),
        "network record registered with one text": lambda: _register(aliases="rn"),
        "network record registered with ``time_stride=0``": lambda: _register(time_stride=0),
        "network record registered with a ``min_frames``": lambda: _register(min_frames=4),
        "network record registered with a receptive field": lambda: _register(receptive_field=2),
        "transformer given an extractor on an unregistered record": lambda: _unpicklable_impostor(folder),
        "output that is a FIFO": lambda: _fifo_output(folder),
        "existing output of mode 0600": lambda: _mode_kept(folder),
        "output that is a symbolic link": lambda: _link_kept(folder),
        "temporary file left beside an output": lambda: _stale_removed(folder),
        "``extract-audio`` run that fails": lambda: _failed_run(folder, drn_file),
        "``extract-audio`` with ``sub.wav``": lambda: _clash(folder, drn_file),
        "``extract-audio`` with a model in a folder": lambda: _model_in_non_utf8_folder(folder, drn_file),
        "``extract-audio`` with a recording in a folder": lambda: _input_in_non_utf8_folder(folder, drn_file),
        "``extract-audio`` with a FIFO as input": lambda: _fifo_input(folder, drn_file),
        "``extract-audio`` with a FIFO as output": lambda: _fifo_out(folder, drn_file),
        "``extract-audio --device meta``": lambda: _extract(WAV, "-o", folder / "o.h5", "--model", drn_file, "-d", "meta"),
        "folder holding a symbolic link": lambda: _linked_folders(folder),
        "list file with a byte-order mark": lambda: _list_file(folder),
        "``extract-audio`` to HDF5 on a disk that fills up": lambda: _disk_filled_during_the_work(folder, drn_file, monkeypatch),
        "``extract-audio`` to ``.npy``": lambda: _npy_output(folder, drn_file),
        "``extract-audio`` as root to an output that is a symbolic link planted": lambda: _planted_link(folder, drn_file),
        "``extract-audio`` with a file named ``..wav``": lambda: _dot_dot_wav(folder, drn_file),
        "``extract-audio`` with an input path longer": lambda: _too_long_input(folder, drn_file),
        "``extract-audio`` with an output name longer": lambda: _extract(WAV, "-o", folder / ("o" * 300 + ".h5")),
        "``extract-audio`` with a WAV file cut short": lambda: _cut_short_wav(folder, drn_file),
        "WAV file whose RIFF size is wrong": lambda: _wrong_riff_size(folder),
        "``export`` with ``-o`` naming the model file": lambda: _export_onto_its_model(folder, drn_file),
        "``export`` of a network that ``torch.export`` cannot trace": lambda: _export_untraceable(folder, drn_file),
        "two extractors building their runtime at once": lambda: _runtimes_built_in_two_threads(drn_file, monkeypatch),
        "runtime cache entry whose model": lambda: _damaged_cache_entry(),
        "runtime cache folder that cannot be written": lambda: _unwritable_cache(folder, monkeypatch, []),
        "``score --calibration``": lambda: _calibration_for_another_norm(folder),
        "``score --trials``": lambda: _unknown_trial_key(folder),
        "``calibrate`` on": lambda: _calibrate_without_targets(folder),
    }


def _command(*args):
    result = CliRunner().invoke(pytorch, [str(arg) for arg in args], catch_exceptions=False)
    return result.exit_code, result.stderr


def _scoring_inputs(folder: Path) -> Path:
    """Six random 8-dimensional embeddings of speakers s0 and s1, as extract-audio writes them."""
    rng = numpy.random.default_rng(0)
    results = [inputs.Embedded(inputs.AudioInput(f"s{i % 2}/r{i}", WAV), rng.standard_normal((1, 8)).astype(numpy.float32),
                                16000, 16000) for i in range(6)]
    outputs.write_output(results, folder / "e.h5", {"network": "dltresnet34"})
    return folder / "e.h5"


def _calibration_for_another_norm(folder: Path):
    embeddings = _scoring_inputs(folder)
    _command("score", embeddings, "-o", folder / "dev.csv", "--norm", "s-norm", "--cohort", embeddings)
    _command("calibrate", folder / "dev.csv", "-o", folder / "c.json")
    return _command("score", embeddings, "-o", folder / "llr.csv", "--calibration", folder / "c.json")


def _unknown_trial_key(folder: Path):
    embeddings = _scoring_inputs(folder)
    (folder / "t.txt").write_text("s0/r0 nobody target\n")
    return _command("score", embeddings, "-t", folder / "t.txt", "-o", folder / "s.csv")


def _calibrate_without_targets(folder: Path):
    embeddings = _scoring_inputs(folder)
    (folder / "t.txt").write_text("s0/r0 s1/r1 nontarget\ns0/r0 s1/r3 nontarget\n")
    _command("score", embeddings, "-t", folder / "t.txt", "-o", folder / "s.csv")
    return _command("calibrate", folder / "s.csv", "-o", folder / "c.json")
