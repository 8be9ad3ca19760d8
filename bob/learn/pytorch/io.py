"""Embedding files: one float64 HDF5 dataset ``feats``, written atomically."""
import errno
import os
from typing import Any, Union

import h5py
import numpy

from .atomic import replacing
from .paths import planted_link_problem

__all__ = ["write_embedding", "read_embedding", "utf8_encodable", "DATASET"]

#: Name of the dataset holding the embedding, as in the original package.
DATASET = "feats"

PathLike = Union[str, "os.PathLike[str]"]


def write_embedding(data: Any, path: PathLike) -> None:
    """Write ``data`` as float64 dataset ``feats`` of a new HDF5 file at ``path``.

    The file is written beside the target under a temporary name and renamed
    into place, so a failure leaves any previous file intact and nothing half
    written. Missing parent folders are created; the file gets the usual
    permissions (``0o666`` less the umask).

    Raises
    ------
    TypeError
        If ``data`` is not an array of real numbers (``None``, objects,
        complex numbers, strings).
    PermissionError, OSError
        If the folder cannot be created or written, naming the path, or the
        path goes through a symbolic link planted by another user in a shared
        folder (:func:`~bob.learn.pytorch.paths.planted_link_problem`).
    """
    source = numpy.asarray(data)
    if source.dtype.kind not in "biuf":
        raise TypeError(
            f"embeddings must be an array of real numbers, got {type(data).__name__} of dtype {source.dtype}"
        )
    array = source.astype(numpy.float64)
    planted = planted_link_problem(path)
    if planted:
        raise PermissionError(errno.EPERM, f"cannot write embeddings to {path}: {planted}")
    with replacing(path, what="embeddings") as temporary:
        with h5py.File(temporary, "w") as hdf5:
            hdf5.create_dataset(DATASET, data=array)


def read_embedding(path: PathLike) -> numpy.ndarray:
    """Return dataset ``feats`` of the HDF5 file at ``path`` as stored (float64 when :func:`write_embedding` wrote it).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    OSError
        If the file is not HDF5.
    ValueError
        If it has no ``feats`` dataset.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no embedding file {path}")
    try:
        hdf5 = h5py.File(path, "r")
    except OSError as error:
        raise OSError(f"{path} is not an HDF5 file ({error})") from None
    with hdf5:
        dataset = hdf5.get(DATASET)
        if not isinstance(dataset, h5py.Dataset):
            raise ValueError(f"{path} has no dataset '{DATASET}'; it was not written by write_data")
        return dataset[()]


def utf8_encodable(name: str) -> bool:
    """True if ``name`` can be written into the output files (HDF5 names, CSV), which hold UTF-8 text.

    A file name whose bytes are not UTF-8 (an old Latin-1 archive, say)
    reaches Python with surrogate escapes, which no UTF-8 file can hold.

    >>> latin1_name = os.fsdecode("h\u00e9l\u00e8ne.wav".encode("latin-1"))  # as os.listdir returns it
    >>> utf8_encodable("h\u00e9l\u00e8ne.wav"), utf8_encodable(latin1_name)
    (True, False)
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
