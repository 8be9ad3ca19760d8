"""The calls behind the rows of the second table of doc/robustness.rst (files, downloads, command line).

Each case returns what the row's outcome names: nothing (it raises), a text
describing what was kept ("accepted"), or ``(exit status, standard error)``.
"""
import os
import shutil
import stat
from pathlib import Path

import numpy
from click.testing import CliRunner

from bob.learn.pytorch.atomic import temporary_name
from bob.learn.pytorch.download import DownloadOptions, download_model
from bob.learn.pytorch.io import write_embedding
from bob.learn.pytorch.model_files import download_options, ensure_model_file, resolve_model_url, resolve_sha256
from bob.learn.pytorch import pretrained
from bob.learn.pytorch.script import extract
from bob.learn.pytorch.script.pytorch import pytorch

from .conftest import SPEECH

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
    items, problems = extract.collect_inputs([str(folder / "corpus")])
    return ", ".join(item.name for item in items) + (f" ({len(problems)} problems)" if problems else "")


def _list_file(folder):
    for name in ("a.wav", "take#2.wav", " lead.wav"):
        shutil.copy(WAV, folder / name)
    lines = ["# recordings", "a.wav   # first", "take#2.wav", "\\ lead.wav"]
    (folder / "list.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    items, problems = extract.collect_inputs([str(folder / "list.txt")])
    return "names " + ", ".join(item.name for item in items) + (f" ({len(problems)} problems)" if problems else "")


def cases(tmp_path: Path, drn_file: Path, home: Path, server, monkeypatch) -> dict:
    """Row prefix → the call it describes."""
    folder = tmp_path / "work"
    folder.mkdir()
    return {
        "download from a server sending one byte": lambda: _deadline_through_settings(home, server, folder),
        "download from a server sending its headers": lambda: _download(server, folder, "drip_headers", deadline=0.5),
        "download slower than": lambda: _download(server, folder, "drip", min_rate=1e9, rate_window=0.2),
        "download with a body without end": lambda: _download(server, folder, "endless", max_bytes=1 << 20),
        "compressed body that expands": lambda: _download(server, folder, "gzip_bomb", max_bytes=1 << 20),
        "``Content-Length`` beyond": lambda: _download(server, folder, "huge_length"),
        "setting ``download_timeout``": lambda: (_settings(home, download_timeout="inf"), download_options()),
        "setting ``drn_sha256``": lambda: (_settings(home, drn_sha256='"abc"'), resolve_sha256(DRN, "http://m/x")),
        "setting ``drn_url``": lambda: (_settings(home, drn_url='"ftp://m/x"'), resolve_model_url(DRN)),
        "download address with a user name": lambda: _credentials(server, folder),
        "setting ``drn_modelpath`` naming a FIFO": lambda: _special_model_setting(home, folder, server),
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
    results = [extract.Embedded(extract.AudioInput(f"s{i % 2}/r{i}", WAV), rng.standard_normal((1, 8)).astype(numpy.float32),
                                16000, 16000) for i in range(6)]
    extract.write_output(results, folder / "e.h5", {"network": "dltresnet34"})
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
