"""Replacing files: permission bits, symbolic links, special files, fsync, leftovers of killed runs, folders."""
import os
import socket
import stat
import subprocess
import sys

import pytest

from bob.learn.pytorch import atomic
from bob.learn.pytorch.atomic import companion_name, make_folders, remove_empty_folders, replacing, temporary_name

from .conftest import file_behind_link


@pytest.fixture
def work(tmp_path):
    """A folder of its own (tmp_path also holds the isolated home)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def write(path, text):
    with replacing(path, what="notes") as temporary:
        temporary.write_text(text)


def test_an_existing_file_keeps_its_permission_bits(work):
    target = work / "secret.h5"
    target.write_text("old")
    target.chmod(0o600)
    write(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_new_file_gets_the_usual_permissions(work):
    mask = os.umask(0o027)
    try:
        write(work / "new.h5", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((work / "new.h5").stat().st_mode) == 0o640


def test_a_symbolic_link_stays_a_link_to_the_new_content(work):
    real, link = file_behind_link(work, "run3.h5", "old", 0o640)
    write(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new" and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(path.name for path in real.parent.iterdir()) == ["run3.h5"]


def test_a_dangling_link_gets_its_file(work):
    link = work / "out.h5"
    link.symlink_to(work / "elsewhere.h5")
    write(link, "x")
    assert link.is_symlink() and (work / "elsewhere.h5").read_text() == "x"


def test_a_fifo_is_never_replaced(work):
    fifo = work / "out.h5"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"cannot write notes to .*out.h5: not a regular file \(a FIFO \(named pipe\)\)"):
        write(fifo, "x")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert [path.name for path in work.iterdir()] == ["out.h5"]


def test_a_socket_is_never_replaced(work):
    path = work / "s.h5"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(OSError, match=r"not a regular file \(a socket\)"):
            write(path, "x")
        assert stat.S_ISSOCK(path.stat().st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a device node")
def test_as_root_a_device_node_is_never_replaced(work):
    device = work / "null.h5"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(OSError, match=r"not a regular file \(a character device\)"):
        write(device, "x")
    assert stat.S_ISCHR(device.stat().st_mode) and device.stat().st_rdev == os.makedev(1, 3)


def test_a_folder_is_never_replaced(work):
    (work / "out.h5").mkdir()
    with pytest.raises(IsADirectoryError, match="out.h5: a folder"):
        write(work / "out.h5", "x")


def test_the_temporary_file_is_flushed_and_synced_before_the_rename(work, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    def recording_replace(source, destination):
        events.append(("replace", str(source)))
        replace(source, destination)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    write(work / "out.h5", "x")
    [(first, temporary), (second, renamed), (third, folder)] = events
    assert (first, second, third) == ("fsync", "replace", "fsync")
    assert temporary == renamed and ".partial" in temporary and folder == str(work)


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(work):
    target = work / "out.h5"
    killed = subprocess.run(
        [sys.executable, "-c", "import os, sys; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(killed.stdout)
    stale = temporary_name(target)
    stale = stale.with_name(stale.name.replace(f".{os.getpid()}.", f".{dead_pid}."))
    stale.write_text("half")
    running = temporary_name(target)  # this process: a concurrent writer, kept
    running.write_text("in progress")
    other_host = work / f".out.h5.otherhost.{dead_pid}.{'0' * 32}.partial"
    other_host.write_text("not ours to judge")
    other_target = work / f".other.h5.{stale.name.split('.', 3)[3]}"
    other_target.write_text("another output's")
    write(target, "x")
    assert sorted(path.name for path in work.iterdir()) == sorted(
        ["out.h5", running.name, other_host.name, other_target.name]
    )


def _dead_pid():
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(finished.stdout)


def _left_by(target, pid):
    made = temporary_name(target)
    made = made.with_name(made.name.replace(f".{os.getpid()}.", f".{pid}."))
    made.write_text("half")
    return made


@pytest.mark.parametrize("suffix", [".v2", ".h5", "~", ".1.2.3"])
def test_a_target_named_like_another_plus_a_suffix_never_loses_its_temporary(work, suffix):
    """Writing ``out.h5`` removes dead temporaries of ``out.h5`` only, never those of ``out.h5.v2`` (issue 26, class 4)."""
    dead = _dead_pid()
    other = work / f"out.h5{suffix}"
    kept = [_left_by(other, dead), _left_by(other, os.getppid())]
    _left_by(work / "out.h5", dead)
    write(work / "out.h5", "x")
    assert sorted(path.name for path in work.iterdir()) == sorted(["out.h5"] + [path.name for path in kept])


@pytest.mark.parametrize("length", [138, 200, 255])
def test_names_up_to_255_bytes_are_written_through_temporaries_that_fit(work, length):
    target = work / ("é" * (length // 2) + "x" * (length % 2))
    assert len(os.fsencode(target.name)) == length
    temporary = temporary_name(target)
    assert len(os.fsencode(temporary.name)) <= 255
    assert temporary.name.startswith("." + "é" * 60) and "~" in temporary.name
    write(target, "long")
    assert [path.name for path in work.iterdir()] == [target.name] and target.read_text() == "long"


def test_long_names_keep_temporaries_of_one_target_apart(work):
    """Two names of 255 bytes that differ only at the end: each removes only its own dead temporaries."""
    first, second = work / ("a" * 254 + "1"), work / ("a" * 254 + "2")
    assert companion_name(first, ".lock").name != companion_name(second, ".lock").name
    assert len(os.fsencode(companion_name(first, ".lock").name)) == 255
    kept = _left_by(second, _dead_pid())
    _left_by(first, _dead_pid())
    write(first, "x")
    assert sorted(path.name for path in work.iterdir()) == sorted([first.name, kept.name])


def test_a_name_longer_than_the_file_system_accepts_is_refused_before_writing(work):
    target = work / "new" / ("x" * 256)
    with pytest.raises(OSError, match=r"cannot write notes to .*: its name is 256 bytes long, longer than the 255 bytes"):
        write(target, "x")
    assert list(work.iterdir()) == []


def test_a_temporary_removed_by_another_program_is_named(work):
    with pytest.raises(FileNotFoundError) as caught:
        with replacing(work / "out.h5", what="notes") as temporary:
            temporary.write_text("x")
            temporary.unlink()
    assert caught.value.strerror == (
        f"cannot write notes to {work / 'out.h5'}: its temporary file {temporary.name} was removed by another program "
        "before it could be renamed into place; nothing was written, try again"
    )
    assert list(work.iterdir()) == []


def test_a_failed_write_removes_the_folders_it_made_and_only_those(work):
    (work / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with replacing(work / "kept" / "a" / "b" / "out.h5"):
            raise RuntimeError("failed")
    assert [path.name for path in work.iterdir()] == ["kept"] and not list((work / "kept").iterdir())


def test_make_folders_returns_what_it_made(work):
    created = make_folders(work / "a" / "b")
    assert created == [work / "a", work / "a" / "b"]
    (work / "a" / "note").write_text("")
    remove_empty_folders(created)
    assert (work / "a").is_dir() and not (work / "a" / "b").exists()


def test_not_regular_file_reason_follows_links(work):
    assert atomic.not_regular_file_reason(work / "missing") == ""
    (work / "link").symlink_to("/dev/null")
    assert atomic.not_regular_file_reason(work / "link") == "not a regular file (a character device)"


def test_a_loop_of_links_is_named(work):
    (work / "a.h5").symlink_to(work / "b.h5")
    (work / "b.h5").symlink_to(work / "a.h5")
    with pytest.raises(OSError, match=r"a.h5: not a regular file \(a loop of symbolic links\)"):
        write(work / "a.h5", "x")
