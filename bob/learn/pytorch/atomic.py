"""Writing files so that a half-written one is never seen."""
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

__all__ = ["replacing"]


@contextmanager
def replacing(path: Union[str, "os.PathLike[str]"], what: str = "a file") -> Iterator[Path]:
    """Yield a new empty file beside ``path``; move it onto ``path`` when the block succeeds.

    Missing parent folders are created. The temporary file
    (``.<name>.<random>.partial``) gets the permissions of any new file
    (``0o666`` less the umask). If the block raises, or is interrupted, the
    temporary file is removed and a previous file at ``path`` stays untouched.

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
        made or written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with replacing(target) as temporary:
    ...     _ = temporary.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        open(temporary, "xb").close()
    except OSError as error:
        reason = error.strerror or str(error)
        raise type(error)(error.errno, f"cannot write {what} to {path}: {reason}", str(path.parent)) from None
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
