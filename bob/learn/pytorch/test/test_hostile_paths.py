"""Paths that are not what they seem: model paths and inputs that are devices, FIFOs, sockets or links; list files."""
import logging
import os
import re
import shutil
import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from bob.learn.pytorch import ModelDownloadError
from bob.learn.pytorch.download import DownloadOptions, download_model
from bob.learn.pytorch.weights import ensure_model_file
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor
from bob.learn.pytorch import pretrained
from bob.learn.pytorch import inputs
from bob.learn.pytorch.script.pytorch import pytorch

from .conftest import SPEECH

DRN = pretrained.get("dltresnet34")
FAST = DownloadOptions(connect_timeout=2.0, read_timeout=1.0, attempts=1, progress=False)
GOOD = ["flite_kal_u1.wav", "fest_ked_u2.wav"]


def run(*args):
    return CliRunner().invoke(pytorch, [str(arg) for arg in args], catch_exceptions=False)


def set_model_path(home: Path, path: Path, url: str = "") -> None:
    config = home / ".config"
    config.mkdir(parents=True, exist_ok=True)
    lines = ["[bob.learn.pytorch.extractor.audio]", f'drn_modelpath = "{path}"'] + ([f'drn_url = "{url}"'] if url else [])
    (config / "bobrc.toml").write_text("\n".join(lines) + "\n")


@pytest.fixture(params=["fifo", "socket", "device"])
def special(request, tmp_path):
    """A path naming a FIFO, a socket or (as root) a character device (a copy of /dev/null's node)."""
    path = tmp_path / "special" / "drn34.pth.tar"
    path.parent.mkdir()
    if request.param == "fifo":
        os.mkfifo(path)
        yield path, "a FIFO (named pipe)", stat.S_ISFIFO
    elif request.param == "socket":
        with socket.socket(socket.AF_UNIX) as bound:
            bound.bind(str(path))
            yield path, "a socket", stat.S_ISSOCK
    else:
        if os.geteuid() != 0:
            pytest.skip("only root can make a device node")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        yield path, "a character device", stat.S_ISCHR


# -- model paths --------------------------------------------------------------------------------


def test_a_model_argument_that_is_not_a_regular_file_is_refused(special):
    path, kind, still = special
    with pytest.raises(OSError, match=rf"model file {path} \(from the argument\) is not a regular file \({re.escape(kind)}\)"):
        DltResNetExtractor(str(path))
    assert still(path.lstat().st_mode)


def test_a_model_setting_naming_a_device_is_never_downloaded_onto(special, isolated_settings, server):
    path, kind, still = special
    set_model_path(isolated_settings, path, server.url("drn34.pth.tar"))
    with pytest.raises(OSError, match=rf"from the setting {DRN.path_key} in .*\) is not a regular file \({re.escape(kind)}\)"):
        ensure_model_file(DRN, options=FAST)
    assert server.requests == []
    assert still(path.lstat().st_mode)
    assert sorted(entry.name for entry in path.parent.iterdir()) == ["drn34.pth.tar"]  # no lock, no partial


def test_download_model_itself_never_replaces_a_special_file(special, server):
    path, kind, still = special
    with pytest.raises(ModelDownloadError, match=rf"onto {path}: it is not a regular file \({re.escape(kind)}\)"):
        download_model(DRN, str(path), server.url("drn34.pth.tar"), options=FAST)
    assert server.requests == [] and still(path.lstat().st_mode)


def test_the_command_line_names_a_special_model_file_in_one_line(special, tmp_path):
    path, kind, _ = special
    result = run("extract-audio", SPEECH / GOOD[0], "-o", tmp_path / "out" / "o.h5", "--model", path)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: DltResNet-34 model file {path} (from the argument) is not a regular file ({kind}); "
        f"point it to the model file with 'bob config set {DRN.path_key} /path/to/model.pth.tar'"
    )


def test_info_tells_a_special_model_file(special, isolated_settings):
    path, kind, _ = special
    set_model_path(isolated_settings, path)
    result = run("info")
    assert f"{path} [not a regular file ({kind}): point the setting to the model file]" in result.stdout


# -- inputs -------------------------------------------------------------------------------------


def test_a_fifo_given_as_input_is_reported_without_being_opened(tmp_path, drn_file):
    fifo = tmp_path / "live.wav"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    result = run("extract-audio", fifo, SPEECH / GOOD[0], "-o", tmp_path / "o.h5", "--model", drn_file)
    assert result.exit_code == 1
    assert f"error: {fifo}: not a regular file (a FIFO (named pipe)); give WAV files as regular files" in result.stderr
    assert "wrote 1 embedding row of 1 recording" in result.stdout


def test_a_device_given_as_input_is_reported_without_being_read():
    with pytest.raises(ValueError, match=r"not a regular file \(a character device\)"):
        inputs.read_wav("/dev/zero")  # reading it would never end


def test_symbolic_links_to_folders_are_followed_with_a_loop_guard(tmp_path, caplog):
    root = tmp_path / "corpus"
    (root / "real").mkdir(parents=True)
    shutil.copy(SPEECH / GOOD[0], root / "real" / "a.wav")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(SPEECH / GOOD[1], elsewhere / "b.wav")
    (root / "linked").symlink_to(elsewhere)
    (root / "real" / "loop").symlink_to(root)
    with caplog.at_level(logging.WARNING, logger="bob.learn.pytorch.inputs"):
        items, problems = inputs.collect_inputs([str(root)])
    assert [item.name for item in items] == ["linked/b", "real/a"]
    assert problems == []
    assert any(f"{root / 'real' / 'loop'} is {root} again" in record.getMessage() for record in caplog.records)


def test_broken_links_and_special_files_in_a_folder_are_reported_when_read(tmp_path, drn_file):
    root = tmp_path / "corpus"
    root.mkdir()
    shutil.copy(SPEECH / GOOD[0], root / "a.wav")
    (root / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    os.mkfifo(root / "pipe.wav")
    items, problems = inputs.collect_inputs([str(root)])
    assert [item.name for item in items] == ["a", "gone", "pipe"] and problems == []
    result = run("extract-audio", root, "-o", tmp_path / "o.h5", "--model", drn_file)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {root / 'gone.wav'}: a broken symbolic link",
        f"error: {root / 'pipe.wav'}: not a regular file (a FIFO (named pipe)); give WAV files as regular files",
        "Error: 2 of 3 inputs failed (1 written)",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_sub_folder_is_reported(tmp_path):
    root = tmp_path / "corpus"
    (root / "locked").mkdir(parents=True)
    shutil.copy(SPEECH / GOOD[0], root / "a.wav")
    (root / "locked").chmod(0)
    try:
        items, problems = inputs.collect_inputs([str(root)])
    finally:
        (root / "locked").chmod(0o755)
    assert [item.name for item in items] == ["a"]
    assert [problem.reason for problem in problems] == ["cannot read folder: Permission denied"]


# -- list files ---------------------------------------------------------------------------------


def test_list_files_with_a_byte_order_mark_hashes_and_spaces(tmp_path):
    for name in ("a.wav", "take#2.wav", " lead.wav", "trail .wav", "#first.wav"):
        shutil.copy(SPEECH / GOOD[0], tmp_path / name)
    listing = tmp_path / "list.txt"
    lines = ["# a comment", "  a.wav   # trailing comment", "take#2.wav", r"\ lead.wav", r"trail\ .wav", r"\#first.wav", ""]
    listing.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))
    items, problems = inputs.collect_inputs([str(listing)])
    assert problems == []
    assert [item.path for item in items] == [tmp_path / name for name in ("a.wav", "take#2.wav", " lead.wav", "trail .wav", "#first.wav")]
    assert [item.name for item in items] == ["a", "take#2", " lead", "trail ", "#first"]


def test_a_list_file_that_is_a_fifo_is_reported_without_being_opened(tmp_path):
    fifo = tmp_path / "list.txt"
    os.mkfifo(fifo)
    items, problems = inputs.collect_inputs([str(fifo)])
    assert items == [] and problems == [inputs.Failure(str(fifo), "list file is not a regular file (a FIFO (named pipe))")]
