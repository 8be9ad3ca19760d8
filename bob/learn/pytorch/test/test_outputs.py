"""Output files (outputs module): each written whole or not at all, in one file, never through a planted link."""
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy
import pytest
from click.testing import CliRunner

from bob.learn.pytorch import outputs
from bob.learn.pytorch.io import write_embedding
from bob.learn.pytorch.paths import planted_link_problem
from bob.learn.pytorch.inputs import AudioInput, Embedded, Failure
from bob.learn.pytorch.script.pytorch import pytorch

from .conftest import OTHER_USER, SPEECH, fill, plant_link

GOOD = ["flite_kal_u1.wav", "fest_ked_u2.wav"]


def run(*args):
    return CliRunner().invoke(pytorch, [str(arg) for arg in args], catch_exceptions=False)


def rows_of(tmp_path, names, width=4):
    return [
        Embedded(AudioInput(name, tmp_path / f"{name}.wav"), numpy.full((1, width), index, numpy.float32), 16000, 8)
        for index, name in enumerate(names)
    ]


@pytest.fixture
def work(tmp_path):
    """An empty folder (tmp_path holds the isolated settings' home)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted on a folder (root only; skipped elsewhere)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)



# -- whole or not at all ------------------------------------------------------------------------


def test_a_failing_writer_leaves_the_previous_output_and_no_temporary(work, monkeypatch):
    target = work / "embeddings.h5"
    target.write_bytes(b"previous")

    def fail(results, path, attributes):
        Path(path).write_bytes(b"half")
        raise OSError("cannot go on")

    monkeypatch.setitem(outputs.WRITERS, "hdf5", fail)
    with pytest.raises(OSError, match="cannot go on"):
        outputs.write_output(rows_of(work, ["x"]), target)
    assert target.read_bytes() == b"previous"
    assert sorted(path.name for path in work.iterdir()) == ["embeddings.h5"]


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".csv"])
def test_a_full_disk_is_one_error_naming_the_cause_and_the_previous_file_survives(small_disk, suffix):
    target = small_disk / f"embeddings{suffix}"
    target.write_bytes(b"previous")
    fill(small_disk)
    with pytest.raises(outputs.OutputError) as error:
        outputs.write_output(rows_of(small_disk, [f"r{i}" for i in range(200)], width=512), target)
    assert str(error.value) == "no space left on device (the previous file is unchanged)"
    assert target.read_bytes() == b"previous"
    assert sorted(path.name for path in small_disk.iterdir()) == [target.name, "filler"]


def test_a_file_size_limit_is_one_error_too(work):
    """Without root (no tmpfs), a file-size limit set in a child process stands for the full disk."""
    script = textwrap.dedent(f"""
        import resource, signal, numpy
        from pathlib import Path
        from bob.learn.pytorch import outputs
        from bob.learn.pytorch.inputs import AudioInput, Embedded
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        rows = [Embedded(AudioInput(f"r{{i}}", Path(f"r{{i}}.wav")), numpy.ones((1, 512), numpy.float32), 16000, 8)
                for i in range(50)]
        try:
            outputs.write_output(rows, {str(work / "e.h5")!r})
        except outputs.OutputError as error:
            print(error)
    """)
    (work / "e.h5").write_bytes(b"previous")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout, result.stderr) == (0, "file too large (the previous file is unchanged)\n", "")
    assert (work / "e.h5").read_bytes() == b"previous"
    assert sorted(path.name for path in work.iterdir()) == ["e.h5"]


CLI_ON_A_DISK_FILLED_DURING_THE_WORK = """
import sys
from bob.learn.pytorch.script import pytorch as cli
embed = cli.run_extraction

def embed_then_fill(*args, **kwargs):
    found = embed(*args, **kwargs)
    with open(sys.argv[1], "wb", buffering=0) as handle:  # another process takes the free space meanwhile
        try:
            while True:
                handle.write(b"\\0" * 4096)
        except OSError:
            pass
    return found

cli.run_extraction = embed_then_fill
cli.main(sys.argv[2:])
"""


def test_extract_audio_on_a_disk_filled_during_the_work_prints_one_line_and_keeps_the_old_output(
    small_disk, drn_file, isolated_settings
):
    output = small_disk / "out.h5"
    output.write_bytes(b"previous run")
    recordings = [SPEECH / name for name in GOOD]
    env = {**os.environ, "HOME": str(isolated_settings), "XDG_CONFIG_HOME": str(isolated_settings / ".config")}
    result = subprocess.run(
        [sys.executable, "-c", CLI_ON_A_DISK_FILLED_DURING_THE_WORK, str(small_disk / "filler"),
         "extract-audio", *map(str, recordings), "-o", str(output), "--model", str(drn_file), "--backend", "eager"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"Error: cannot write {output}: no space left on device (the previous file is unchanged)\n"
    assert output.read_bytes() == b"previous run"
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "out.h5"]


# -- formats --------------------------------------------------------------------------------------


def test_an_npy_output_is_one_file_of_records(work):
    target = work / "rows.npy"
    names = ["caf\u00e9", "sub/x"]
    assert outputs.write_output(rows_of(work, names), target) == [target]
    assert sorted(path.name for path in work.iterdir()) == ["rows.npy"]
    records = numpy.load(target, allow_pickle=False)
    assert records["name"].tolist() == names and records["chunk"].tolist() == [0, 0]
    assert records["source"].tolist() == [str(work / f"{name}.wav") for name in names]
    numpy.testing.assert_array_equal(records["embedding"], [[0] * 4, [1] * 4])
    rows, labels = outputs.read_npy_output(target)
    assert rows.dtype == numpy.float32 and rows.shape == (2, 4) and labels["name"].tolist() == names


def test_the_hdf5_output_holds_each_recording_with_its_attributes(tmp_path):
    target = tmp_path / "e.h5"
    outputs.write_output(rows_of(tmp_path, ["a", "sub/b"]), target, {"model": "DltResNet-34"})
    with h5py.File(target, "r") as hdf5:
        assert hdf5.attrs["model"] == "DltResNet-34"
        numpy.testing.assert_array_equal(hdf5["sub/b"][()], [[1, 1, 1, 1]])
        assert dict(hdf5["a"].attrs) == {"source": str(tmp_path / "a.wav"), "sample_rate": 16000, "duration_s": 8 / 16000}


# -- names HDF5 cannot hold -----------------------------------------------------------------------


def test_names_hdf5_cannot_hold_are_failures_naming_the_file(tmp_path):
    items = [AudioInput(".", tmp_path / "..wav"), AudioInput("sub/..", tmp_path / "sub" / "...wav"), AudioInput("a", tmp_path / "a.wav")]
    kept, failures = outputs.check_names(items, tmp_path / "o.h5")
    assert kept == items[2:]
    assert failures == [
        Failure(str(tmp_path / "..wav"), "its name '.' cannot be stored in HDF5 ('.' names a group itself): rename the file, or write a .csv or .npy output"),
        Failure(str(tmp_path / "sub" / "...wav"), "its name 'sub/..' cannot be stored in HDF5 ('..' names a group itself): rename the file, or write a .csv or .npy output"),
    ]
    assert outputs.check_names(items, tmp_path / "o.csv") == (items, [])


def test_extract_audio_skips_a_file_named_dot_dot_wav_naming_it_and_writes_the_others(tmp_path, drn_file):
    folder = tmp_path / "rec"
    folder.mkdir()
    shutil.copy(SPEECH / GOOD[0], folder / "..wav")
    shutil.copy(SPEECH / GOOD[1], folder / "b.wav")
    result = run("extract-audio", folder, "-o", tmp_path / "o.h5", "--model", drn_file)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {folder / '..wav'}: its name '.' cannot be stored in HDF5 ('.' names a group itself): rename the file, "
        "or write a .csv or .npy output",
        "Error: 1 of 2 inputs failed (1 written)",
    ]
    with h5py.File(tmp_path / "o.h5", "r") as hdf5:
        assert list(hdf5) == ["b"]


# -- the target path ------------------------------------------------------------------------------


def test_an_output_name_longer_than_the_system_allows_is_too_long_not_missing(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    output = tmp_path / ("e" * name_max + ".h5")
    result = run("extract-audio", SPEECH / GOOD[0], "-o", output)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: cannot write {output}: file name too long: a name of {name_max + 3} bytes, the system allows {name_max}\n"
    )


@pytest.fixture
def shared_folder(tmp_path):
    """A sticky folder everyone can write, as /tmp, holding a link of another user to a file only root may write."""
    protected = tmp_path / "root-only"
    protected.write_text("root's file")
    protected.chmod(0o600)
    shared, link = plant_link(tmp_path, "out.h5", protected)
    return shared, link, protected


def test_a_link_planted_by_another_user_in_a_shared_folder_is_not_followed(shared_folder, tmp_path):
    shared, link, protected = shared_folder
    expected = (
        f"{link} is a symbolic link of another user (uid {OTHER_USER}) in the shared folder {shared} "
        "(sticky, writable by everyone), which is not followed: remove the link or write elsewhere"
    )
    assert planted_link_problem(link) == expected
    assert planted_link_problem(link.parent / "other.h5") == ""
    with pytest.raises(outputs.OutputError, match="is a symbolic link of another user"):
        outputs.write_output(rows_of(tmp_path, ["a"]), link)
    with pytest.raises(PermissionError, match=f"cannot write embeddings to {link}: {link} is a symbolic link of another"):
        write_embedding(numpy.zeros((1, 4)), link)
    result = run("extract-audio", SPEECH / GOOD[0], "-o", link)
    assert (result.exit_code, result.stderr) == (1, f"Error: cannot write {link}: {expected}\n")
    assert protected.read_text() == "root's file" and link.is_symlink()


def test_a_planted_link_to_a_folder_on_the_way_is_not_followed_either(shared_folder, tmp_path):
    shared, _, _ = shared_folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (shared / "dir").symlink_to(elsewhere)
    os.lchown(shared / "dir", OTHER_USER, OTHER_USER)
    assert "dir is a symbolic link of another user" in planted_link_problem(shared / "dir" / "o.h5")


def test_links_of_the_user_or_of_the_folders_owner_are_followed(shared_folder, tmp_path):
    shared, link, protected = shared_folder
    os.lchown(link, 0, 0)
    assert planted_link_problem(link) == ""
    outputs.write_output(rows_of(tmp_path, ["a"]), link)
    assert link.is_symlink() and protected.read_bytes()[:4] == b"\x89HDF"
    not_sticky = tmp_path / "plain"
    not_sticky.mkdir()
    not_sticky.chmod(0o777)
    (not_sticky / "o.h5").symlink_to(protected)
    os.lchown(not_sticky / "o.h5", OTHER_USER, OTHER_USER)
    assert planted_link_problem(not_sticky / "o.h5") == ""
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
