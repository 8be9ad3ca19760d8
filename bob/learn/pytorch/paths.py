"""Paths an output may be written to: the kernel's rule for symbolic links in shared folders, applied to renames.

:func:`~bob.learn.pytorch.atomic.replacing` resolves a symbolic link and
renames the new file onto what it points to, which the kernel's
``protected_symlinks`` rule does not cover (it guards opening a link, not a
rename onto its target). Every writer of the package checks the path here
first (:func:`bob.learn.pytorch.outputs.write_output`,
:func:`bob.learn.pytorch.io.write_embedding`).
"""
import os
import stat
from pathlib import Path
from typing import Union

__all__ = ["planted_link_problem"]

PathLike = Union[str, "os.PathLike[str]"]


def planted_link_problem(path: PathLike) -> str:
    """Why following the symbolic links on ``path`` could write where their owner chose: ``""`` when it cannot.

    The rule of the kernel's ``protected_symlinks``: a symbolic link in a
    sticky folder that everyone can write (``/tmp``) is followed only by its
    owner, or when it belongs to the folder's owner. Each part of the path is
    checked, since the file is replaced by a rename (which the kernel's rule
    does not cover) after the links are resolved.

    >>> planted_link_problem("/tmp/embeddings.h5")
    ''
    """
    absolute = Path(os.path.abspath(path))
    user = os.geteuid()
    for depth in range(2, len(absolute.parts) + 1):
        part = Path(*absolute.parts[:depth])
        try:
            link = os.lstat(part)
            folder = os.stat(part.parent)
        except OSError:
            return ""
        if not stat.S_ISLNK(link.st_mode):
            continue
        shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
        if shared and link.st_uid not in (user, folder.st_uid):
            return (
                f"{part} is a symbolic link of another user (uid {link.st_uid}) in the shared folder {part.parent} "
                "(sticky, writable by everyone), which is not followed: remove the link or write elsewhere"
            )
    return ""
