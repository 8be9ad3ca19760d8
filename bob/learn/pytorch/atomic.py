"""Writing files so that a half-written one is never seen.

Conventions of :func:`replacing`, shared by every file the package writes
(embeddings, command-line outputs):

- the new content goes to a hidden temporary file beside the target,
  ``.<name>.<host>.<pid>.<random>.partial``, flushed and fsynced before it is
  renamed onto the target in one step (and the folder is fsynced after);
- every name made beside a target (the temporary file, a download's lock
  file) fits the file system's limit on names (``NAME_MAX``, 255 bytes on most
  file systems): when the target's name leaves too little room, the name is
  shortened and ends with a hash of the whole name, so it still belongs to
  one target only;
- an existing target keeps its permission bits (a 0600 file stays 0600);
- a target that is a symbolic link stays a link: the file it points to is
  replaced (a dangling link gets its file created);
- a target that is not a regular file (a folder, a FIFO, a device, a
  socket) is never written to or replaced;
- temporary files left beside the same target by a process of this machine
  that no longer runs (killed) are removed; those of a running process, or of
  another target (``net.pth.v2`` beside ``net.pth``), are never touched;
- a temporary file removed by another program before the rename is reported
  as such (nothing is written);
- folders created for the target are removed again if the write fails.
"""
import errno
import hashlib
import os
import re
import socket
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Union

__all__ = [
    "replacing", "temporary_name", "companion_name", "make_folders", "remove_empty_folders",
    "not_regular_file_reason", "NAME_MAX",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Longest file name, in bytes, when the file system does not say (ext4, XFS, Btrfs, tmpfs: 255).
NAME_MAX = 255
#: Bytes of a temporary name besides the target's name: ``.`` ``.<host>`` (at most 64)
#: ``.<pid>`` (at most 10) ``.<32 hex digits>`` ``.partial``.
_TEMPORARY_EXTRA = 1 + 65 + 11 + 33 + 8
#: Bytes of a shortened name's end: ``~`` and 16 hex digits of the sha256 of the whole name.
_HASH_END = 17


def _host() -> str:
    return (re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host")[:64]


def _name_max(folder: Path) -> int:
    """The longest file name the file system of ``folder`` (or of its nearest existing parent) accepts."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def _fitted(name: str, room: int) -> str:
    """``name`` if it takes at most ``room`` bytes, else its beginning and a hash of the whole name, in ``room`` bytes."""
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    digest = hashlib.sha256(raw).hexdigest()[: _HASH_END - 1]
    return os.fsdecode(raw[: max(room - _HASH_END, 0)]) + "~" + digest


def _temporary_stem(path: Path) -> str:
    """What the temporary names of ``path`` start with (after the dot): its name, shortened to leave room."""
    return _fitted(path.name, _name_max(path.parent) - _TEMPORARY_EXTRA)


def temporary_name(path: PathLike) -> Path:
    """A new temporary file name beside ``path``: ``.<name>.<host>.<pid>.<random>.partial``.

    ``<name>`` is shortened (its beginning and a hash of the whole name) when
    the name would not fit the file system. Left behind by a killed process, the
    file is removed by the next :func:`replacing` of ``path``.
    """
    path = Path(path)
    return path.with_name(f".{_temporary_stem(path)}.{_host()}.{os.getpid()}.{uuid.uuid4().hex}.partial")


def companion_name(path: PathLike, suffix: str) -> Path:
    """The file beside ``path`` named after it with ``suffix`` (``net.pth`` → ``net.pth.lock``).

    The name is shortened like those of :func:`temporary_name` when it would not fit.

    >>> companion_name("/models/net.pth", ".lock")
    PosixPath('/models/net.pth.lock')
    """
    path = Path(path)
    room = _name_max(path.parent) - len(os.fsencode(suffix))
    return path.with_name(_fitted(path.name, room) + suffix)


def _check_name_length(path: Path, what: str) -> None:
    limit = _name_max(path.parent)
    size = len(os.fsencode(path.name))
    if size > limit:
        raise OSError(
            errno.ENAMETOOLONG,
            f"cannot write {what} to {path}: its name is {size} bytes long, longer than the {limit} bytes "
            "the file system accepts; choose a shorter name",
            str(path),
        )


def not_regular_file_reason(path: PathLike) -> str:
    """Why ``path`` cannot be replaced by a file: ``""`` when it can (a regular file, or nothing yet).

    Symbolic links are followed.

    >>> not_regular_file_reason("/dev/null")
    'not a regular file (a character device)'
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "not a regular file (a loop of symbolic links)"
        raise
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "a folder"
    kinds = {
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def make_folders(folder: PathLike) -> List[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest last."""
    folder = Path(os.path.abspath(folder))
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    for each in reversed(missing):
        try:
            each.mkdir()
        except FileExistsError:  # made meanwhile by another process: not ours to remove
            continue
        created.append(each)
    return created


def remove_empty_folders(folders: List[Path]) -> None:
    """Remove the folders of ``folders`` (as :func:`make_folders` returns them) that are still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty (something else was written there), or gone
            return


def _stale_partials(path: Path) -> Iterator[Path]:
    """Temporary files of ``path`` left by processes of this machine that no longer run."""
    stem, host = re.escape(_temporary_stem(path)), re.escape(_host())
    pattern = re.compile(rf"\.{stem}\.{host}\.(?P<pid>\d+)\.[0-9a-f]{{32}}\.partial")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and not _running(int(match["pid"])):
            yield path.parent / name


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def _remove_stale_partials(path: Path) -> None:
    for stale in _stale_partials(path):
        try:
            stale.unlink()
        except OSError:  # removed meanwhile, or not ours to remove
            pass


def _fsync(path: Path, directory: bool = False) -> None:
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(descriptor)
    except OSError as error:  # some file systems cannot sync a folder
        if not directory or error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


def _target_of(path: Path) -> Path:
    """``path``, or the file it points to when it is a symbolic link (which is kept)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _refuse(error_class: type, code: int, what: str, path: Path, reason: str) -> OSError:
    return error_class(code, f"cannot write {what} to {path}: {reason}", str(path))


@contextmanager
def replacing(path: PathLike, what: str = "a file") -> Iterator[Path]:
    """Yield a new empty file beside ``path``; move it onto ``path`` when the block succeeds.

    See the module's conventions: missing folders are created (and removed
    again on failure), an existing file keeps its permission bits, a symbolic
    link keeps pointing to the new file, a folder or special file is never
    touched. A new file gets the permissions of any new file (``0o666`` less
    the umask). If the block raises, or is interrupted, the temporary file is
    removed and a previous file at ``path`` stays untouched.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    what : str
        What is written, for the error message.

    Raises
    ------
    OSError
        ``cannot write <what> to <path>: <reason>`` when the folder cannot be
        made or written, the name is too long for the file system, ``path`` is
        not a regular file (a folder: IsADirectoryError), or the temporary file
        was removed by another program before the rename (FileNotFoundError).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with replacing(target) as temporary:
    ...     _ = temporary.write_text("done")
    >>> target.read_text()
    'done'
    """
    _check_name_length(Path(path), what)
    path = _target_of(Path(path))
    reason = not_regular_file_reason(path)
    if reason:
        error_class = IsADirectoryError if path.is_dir() else OSError
        raise _refuse(error_class, errno.EISDIR if path.is_dir() else errno.EINVAL, what, path, reason)
    temporary = temporary_name(path)
    created: List[Path] = []
    try:
        created = make_folders(path.parent)
        _remove_stale_partials(path)
        open(temporary, "xb").close()
    except OSError as error:
        remove_empty_folders(created)
        raise _refuse(type(error), error.errno or 0, what, path, error.strerror or str(error)) from None
    try:
        yield temporary
        _move_into_place(temporary, path, what)
    except BaseException:
        if temporary.exists():
            temporary.unlink()
        remove_empty_folders(created)
        raise


def _move_into_place(temporary: Path, path: Path, what: str) -> None:
    try:
        _keep_mode(path, temporary)
        _fsync(temporary)
        os.replace(temporary, path)
    except FileNotFoundError:
        if temporary.exists():
            raise
        raise _refuse(
            FileNotFoundError, errno.ENOENT, what, path,
            f"its temporary file {temporary.name} was removed by another program before it could be renamed "
            "into place; nothing was written, try again",
        ) from None
    _fsync(path.parent, directory=True)


def _keep_mode(path: Path, temporary: Path) -> None:
    """Give ``temporary`` the permission bits of the file it replaces, if any."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    os.chmod(temporary, mode)
