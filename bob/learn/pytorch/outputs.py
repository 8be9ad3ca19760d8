"""Output files of embeddings: HDF5, ``.npy`` and CSV, each written whole or not at all, and rehearsed first.

One way writes every output (:func:`write_output`): the file is written under
a temporary name beside its target, closed, flushed to disk and renamed into
place in one step by :func:`bob.learn.pytorch.atomic.replacing`. A failure at
any point (a full disk included) leaves the previous file untouched and
raises one :class:`OSError` naming the file and the cause. Every format is
one file, so there is one rename and never a mismatched pair.

Before hours of work, :func:`prepare_output` checks the target's folder and
path and :func:`rehearse_output` writes the whole output once with
placeholder rows, so that every cause of failure knowable in advance shows
at the start.

>>> output_format("embeddings.h5"), output_format("rows.npy")
('hdf5', 'npy')
"""
import csv
import errno
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import h5py
import numpy

from .atomic import make_folders, not_regular_file_reason, remove_empty_folders, replacing, temporary_name
from .inputs import AudioInput, Embedded, Failure, InputConflict
from .paths import planted_link_problem

__all__ = [
    "OUTPUT_FORMATS",
    "OutputError",
    "output_format",
    "check_names",
    "prepare_output",
    "rehearse_output",
    "write_output",
    "read_npy_output",
]

#: Output suffixes and the format each one selects.
OUTPUT_FORMATS = {".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".npy": "npy", ".csv": "csv"}
#: Names a part of an HDF5 path cannot be (they address the group itself or its parent).
HDF5_RESERVED_NAMES = (".", "..")

PathLike = Union[str, "os.PathLike[str]"]


class OutputError(OSError):
    """An output that cannot be written: one line naming the cause (``errno`` set to the system's code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


def output_format(path: PathLike) -> str:
    """``"hdf5"``, ``"npy"`` or ``"csv"`` from the output file's suffix.

    Raises
    ------
    ValueError
        For any other suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        known = ", ".join(OUTPUT_FORMATS)
        raise ValueError(f"cannot tell the output format from '{suffix or Path(path).name}'; use one of {known}")
    return OUTPUT_FORMATS[suffix]


# -- names --------------------------------------------------------------------------------------


def check_names(items: Sequence[AudioInput], path: PathLike) -> Tuple[List[AudioInput], List[Failure]]:
    """The inputs whose names the output at ``path`` can hold, and a failure naming each other one.

    In HDF5 a name is a dataset and each of its ``/``-separated parts a
    group: a part cannot be ``.`` or ``..`` (a file named ``..wav`` or
    ``...wav``), and ``sub`` (from ``sub.wav``) and ``sub/x`` (from
    ``sub/x.wav``) cannot both be stored. CSV and ``.npy`` outputs hold
    names as text.

    Raises
    ------
    InputConflict
        When a name would be both a recording and a group, naming both inputs.
    """
    if output_format(path) != "hdf5":
        return list(items), []
    kept, failures = [], []
    for item in items:
        reserved = [part for part in item.name.split("/") if part in HDF5_RESERVED_NAMES]
        if reserved:
            failures.append(Failure(
                str(item.path),
                f"its name '{item.name}' cannot be stored in HDF5 ('{reserved[0]}' names a group itself): "
                "rename the file, or write a .csv or .npy output",
            ))
        else:
            kept.append(item)
    by_name = {item.name: item for item in kept}
    for item in kept:
        parts = item.name.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in by_name:
                raise InputConflict(
                    f"'{prefix}' would be both a recording and a group of recordings in {path}: "
                    f"{by_name[prefix].path} and {item.path}; rename one of them, or write a .csv or .npy output"
                )
    return kept, failures


# -- the target path ----------------------------------------------------------------------------


def _name_too_long(path: Path) -> str:
    name_max = os.pathconf(path.parent if path.parent.is_dir() else "/", "PC_NAME_MAX")
    longest = max(path.parts, key=lambda part: len(os.fsencode(part)))
    if len(os.fsencode(longest)) > name_max:
        return f"file name too long: a name of {len(os.fsencode(longest))} bytes, the system allows {name_max}"
    return f"file name too long: a path of {len(os.fsencode(str(path)))} bytes, the system allows {os.pathconf('/', 'PC_PATH_MAX')}"


def _target_problem(path: Path) -> str:
    """Why ``path`` cannot be replaced by a file (a planted link, its length, its kind): ``""`` when it can."""
    planted = planted_link_problem(path)
    if planted:
        return planted
    try:
        reason = not_regular_file_reason(path)
    except OSError as error:
        return _name_too_long(path) if error.errno == errno.ENAMETOOLONG else (error.strerror or str(error))
    return f"it is {reason}" if reason else ""


def prepare_output(path: PathLike) -> List[Path]:
    """Create the output's folder and check that ``path`` can be written, before any work is done.

    Returns
    -------
    list of pathlib.Path
        The folders created, for :func:`~bob.learn.pytorch.atomic.remove_empty_folders`.

    Raises
    ------
    OutputError
        Naming the problem: the folder is a file, cannot be created or
        written; the path is too long, is a folder or a special file, or
        goes through a symbolic link planted by another user in a shared
        folder (:func:`~bob.learn.pytorch.paths.planted_link_problem`).
    """
    output = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(output))
    problem = _target_problem(Path(output))
    if problem.startswith("file name too long"):
        raise OutputError(errno.ENAMETOOLONG, f"cannot write {output}: {problem}")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(errno.ENOTDIR, f"cannot write {output}: {folder} is a file, not a folder")
    try:
        created = make_folders(folder)
    except OSError as error:
        raise OutputError(error.errno or 0, f"cannot create the output folder {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        remove_empty_folders(created)
        raise OutputError(errno.EACCES, f"cannot write to the output folder {folder}")
    problem = _target_problem(Path(output))
    if problem:
        remove_empty_folders(created)
        raise OutputError(errno.EINVAL, f"cannot write {output}: {problem}")
    return created


# -- writers ------------------------------------------------------------------------------------


def _hdf5_image(results: Sequence[Embedded], attributes: dict) -> bytes:
    """The bytes of the HDF5 file, built in memory.

    HDF5 writing to a disk that fills up fails while freeing its objects,
    with hundreds of lines of errors and a crash at exit; built in memory,
    the file reaches the disk through one ordinary write, whose failure is
    one :class:`OSError`.
    """
    with h5py.File("embeddings.h5", "w", driver="core", backing_store=False) as hdf5:
        for key, value in attributes.items():
            hdf5.attrs[key] = value
        for result in results:
            dataset = hdf5.create_dataset(result.item.name, data=result.rows)
            dataset.attrs["source"] = os.path.abspath(result.item.path)
            dataset.attrs["sample_rate"] = result.rate
            dataset.attrs["duration_s"] = result.n_samples / result.rate if result.rate else 0.0
            if result.times is not None:
                dataset.attrs["start"] = result.times[:, 0]
                dataset.attrs["end"] = result.times[:, 1]
            if result.labels is not None:
                dataset.attrs["labels"] = list(result.labels)
        hdf5.flush()
        return hdf5.id.get_file_image()


def _write_hdf5(results: Sequence[Embedded], target: Path, attributes: dict) -> None:
    image = _hdf5_image(results, attributes)
    with open(target, "wb") as handle:
        handle.write(image)


def _row_labels(results: Sequence[Embedded]):
    for result in results:
        for chunk in range(len(result.rows)):
            yield result.item.name, chunk, os.path.abspath(result.item.path)


def _timed(results: Sequence[Embedded]) -> bool:
    """Whether the rows are chunks, windows or segments (with times), not whole recordings."""
    return any(result.times is not None for result in results)


def _labelled(results: Sequence[Embedded]) -> bool:
    return any(result.labels is not None for result in results)


def _row_times(results: Sequence[Embedded]) -> Iterator[Tuple[float, float, str]]:
    """Each row's start and end seconds and label (empty when it has none), in row order."""
    for result in results:
        labels = result.labels if result.labels is not None else [""] * len(result.rows)
        for (start, end), label in zip(result.row_times(), labels):
            yield float(start), float(end), label


def _write_csv(results: Sequence[Embedded], target: Path, attributes: dict) -> None:
    width = results[0].rows.shape[1]
    timed, labelled = _timed(results), _labelled(results)
    columns = (["start", "end"] if timed else []) + (["label"] if labelled else [])
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "chunk"] + columns + [f"e{i}" for i in range(width)])
        rows = (row for result in results for row in result.rows)
        for (name, chunk, _), (start, end, label), row in zip(_row_labels(results), _row_times(results), rows):
            times = ([format(start, ".6f"), format(end, ".6f")] if timed else []) + ([label] if labelled else [])
            writer.writerow([name, chunk] + times + [format(float(value), ".9g") for value in row])


def _npy_records(results: Sequence[Embedded]) -> numpy.ndarray:
    """One record per row: ``name``, ``chunk``, ``source`` and the float32 ``embedding``."""
    labels = list(_row_labels(results))
    width = results[0].rows.shape[1]
    text = max(1, *(len(name) for name, _, _ in labels)), max(1, *(len(source) for _, _, source in labels))
    times = list(_row_times(results))
    label_width = max(1, *(len(label) for _, _, label in times))
    dtype = numpy.dtype([
        ("name", f"<U{text[0]}"), ("chunk", "<i8"), ("source", f"<U{text[1]}"),
        ("start", "<f8"), ("end", "<f8"), ("label", f"<U{label_width}"), ("embedding", "<f4", (width,)),
    ])
    records = numpy.empty(len(labels), dtype=dtype)
    records["name"] = [name for name, _, _ in labels]
    records["chunk"] = [chunk for _, chunk, _ in labels]
    records["source"] = [source for _, _, source in labels]
    records["start"] = [start for start, _, _ in times]
    records["end"] = [end for _, end, _ in times]
    records["label"] = [label for _, _, label in times]
    records["embedding"] = numpy.vstack([result.rows for result in results])
    return records


def _write_npy(results: Sequence[Embedded], target: Path, attributes: dict) -> None:
    with open(target, "wb") as handle:
        numpy.save(handle, _npy_records(results), allow_pickle=False)


WRITERS: Dict[str, Callable[[Sequence[Embedded], Path, dict], None]] = {
    "hdf5": _write_hdf5, "npy": _write_npy, "csv": _write_csv,
}


def read_npy_output(path: PathLike) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """The rows of an ``.npy`` output and their labels: ``(embeddings, labels)``.

    ``embeddings`` is the float32 ``(rows, D)`` matrix; ``labels`` the
    record array of ``name``, ``chunk``, ``source``, ``start``, ``end`` (seconds)
    and ``label`` per row. The file
    itself is a plain NumPy record array (``numpy.load`` reads it without
    ``allow_pickle``).
    """
    records = numpy.load(path, allow_pickle=False)
    return records["embedding"], records[[field for field in records.dtype.names if field != "embedding"]]


#: Errors of a full disk, and how they are reported.
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}


def _write(results: Sequence[Embedded], path: PathLike, attributes: dict) -> None:
    """The one way an output is written whole: a temporary beside ``path``, closed, fsynced and renamed."""
    planted = planted_link_problem(path)
    if planted:
        raise OutputError(errno.EPERM, planted)
    write = WRITERS[output_format(path)]
    try:
        with replacing(path, what="embeddings") as temporary:
            write(results, temporary, attributes)
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        kept = "the previous file is unchanged" if os.path.lexists(path) else "nothing was written"
        raise OutputError(error.errno, f"{DISK_FULL[error.errno]} ({kept})") from None


def rehearse_output(
    items: Sequence[AudioInput], path: PathLike, attributes: Optional[dict] = None, width: int = 128
) -> None:
    """Write the output once with placeholder rows under a temporary name, then remove it.

    Every cause of failure of the final :func:`write_output` that is knowable
    before the embedding (names the format cannot hold, text that cannot be
    encoded, a folder that cannot be written) shows here, before hours of
    work instead of after.

    Raises
    ------
    OSError, ValueError, TypeError
        As :func:`write_output` would, naming the problem.
    """
    placeholders = [Embedded(item, numpy.zeros((1, width), numpy.float32), 16000, 16000) for item in items]
    if not placeholders:
        return
    temporary = temporary_name(path)
    try:
        WRITERS[output_format(path)](placeholders, temporary, attributes or {})
    finally:
        if temporary.exists():
            temporary.unlink()


def write_output(results: Sequence[Embedded], path: PathLike, attributes: Optional[dict] = None) -> List[Path]:
    """Write the embeddings to ``path`` in the format its suffix names, whole or not at all.

    * ``.h5``/``.hdf5``/``.hdf``: one float32 dataset per input, named as the
      input (``sub/x`` creates group ``sub``), with attributes ``source``,
      ``sample_rate`` and ``duration_s``; ``attributes`` go on the file.
    * ``.npy``: one NumPy record array, one record per row, with fields
      ``name``, ``chunk``, ``source``, ``start`` and ``end`` (seconds),
      ``label`` and ``embedding`` (float32, ``(D,)``):
      ``numpy.load(path)["embedding"]`` is the ``(rows, D)`` matrix
      (:func:`read_npy_output`).
    * ``.csv``: a header ``name,chunk,e0,...`` and one line per row.

    Chunks (``-L``), windows and segments carry each row's start and end
    seconds: HDF5 attributes ``start`` and ``end`` (and ``labels``) on each
    dataset, ``start`` and ``end`` (and ``label``) columns after ``chunk`` in
    the CSV output; the ``.npy`` records always have them (a whole
    recording's row spans ``0`` to its duration).

    The file is written under a temporary name beside its target, closed,
    flushed and fsynced, and renamed into place (see
    :mod:`bob.learn.pytorch.atomic` for permissions and symbolic links).

    Returns
    -------
    list of pathlib.Path
        The files written (one).

    Raises
    ------
    ValueError
        If ``results`` is empty or the suffix is unknown.
    OutputError
        On a full disk (``no space left on device``, naming whether the
        previous file is kept), or a symbolic link planted by another user
        (:func:`~bob.learn.pytorch.paths.planted_link_problem`); nothing is replaced.
    OSError
        If the folder cannot be written, naming it.
    """
    if not results:
        raise ValueError("no embedding to write")
    _write(results, path, attributes or {})
    return [Path(path)]
