"""The work behind ``bob pytorch extract-audio``: find inputs, embed them, write one output file.

Kept apart from the click commands so that each step can be tested and
reused (the demo uses the same functions). Nothing here prints: failures are
returned as :class:`Failure` records and the command decides how to report them.
"""
import contextlib
import csv
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import h5py
import numpy
import scipy.io.wavfile

from ..atomic import not_regular_file_reason, replacing, temporary_name
from ..io import utf8_encodable
from ..preprocessor.audio import EmbeddingExtractor
from ..regions import RegionRequest

__all__ = [
    "AudioInput", "Failure", "Embedded", "InputConflict",
    "collect_inputs", "read_wav", "embed_inputs", "check_names", "rehearse_output", "write_output",
]

logger = logging.getLogger(__name__)

#: Suffixes of files read as lists of recordings (one path per line).
LIST_SUFFIXES = (".txt", ".lst", ".list")
#: Output suffixes and the format each one selects.
OUTPUT_FORMATS = {".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".npy": "npy", ".csv": "csv"}

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class AudioInput:
    """One recording to embed.

    Attributes
    ----------
    name : str
        Key of its embedding in the output: the file name without ``.wav``
        for a file given directly, the path relative to the folder or list
        file otherwise (``/``-separated).
    path : pathlib.Path
        The WAV file.
    """

    name: str
    path: Path


@dataclass(frozen=True)
class Failure:
    """An input that produced no embedding, and why (one line)."""

    source: str
    reason: str


@dataclass(frozen=True)
class Embedded:
    """The embedding rows of one input: ``(1, D)``, one row per chunk with ``-L``, or one per window or segment.

    ``times`` (``(N, 2)`` start and end seconds) and ``labels`` are set for
    windows and segments (:class:`~bob.learn.pytorch.regions.RegionRequest`).
    """

    item: AudioInput
    rows: numpy.ndarray
    rate: int
    n_samples: int
    times: Optional[numpy.ndarray] = None
    labels: Optional[List[str]] = None


class InputConflict(ValueError):
    """Two different recordings would be stored under the same name."""


def _name_from_relative(relative: str) -> str:
    """``sub/dir/x.wav`` → ``sub/dir/x``; ``..`` and leading separators are dropped."""
    parts = [part for part in PurePosixPath(relative.replace(os.sep, "/")).parts if part not in ("/", ".", "..")]
    if not parts:
        return ""
    stem = parts[-1]
    if stem.lower().endswith(".wav"):
        stem = stem[: -len(".wav")]
    return "/".join(parts[:-1] + [stem])


def _is_wav(name: str) -> bool:
    return name.lower().endswith(".wav")


def _wav_files_under(folder: Path) -> Tuple[List[Path], List[Failure]]:
    """The ``.wav`` entries under ``folder``, in sorted order, following symbolic links to folders.

    A folder reached a second time (a link loop, or two links to one folder)
    is searched once, with a warning; a sub-folder that cannot be read, and a
    ``.wav`` entry that is not a regular file (a FIFO, a device, a broken
    link), is reported.
    """
    found: List[Path] = []
    problems: List[Failure] = []
    seen = {}

    def walk(current: Path) -> None:
        try:
            identity = (current.stat().st_dev, current.stat().st_ino)
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as error:
            problems.append(Failure(str(current), f"cannot read folder: {error.strerror or error}"))
            return
        if identity in seen:
            logger.warning("%s is %s again (a symbolic link loop or a second link): searched once", current, seen[identity])
            return
        seen[identity] = current
        for entry in entries:
            path = current / entry.name
            if entry.is_dir():  # follows symbolic links
                walk(path)
            elif _is_wav(entry.name):
                reason = not_regular_file_reason(path) if os.path.exists(path) else "a broken symbolic link"
                if reason:
                    problems.append(Failure(str(path), f"{reason}: skipped"))
                else:
                    found.append(path)

    walk(folder)
    return found, problems


def _list_entry(line: str) -> str:
    r"""The path a list-file line names: ``""`` for a blank line or a comment.

    Whitespace around the path is dropped; ``#`` at the start of a line or
    after whitespace starts a comment; ``\#``, ``\ `` and ``\\`` stand for
    ``#``, a space (kept even at either end) and a backslash.

    >>> [_list_entry(line) for line in ["  a b.wav  ", "# note", "x.wav # note", "take#2.wav", r"\ lead.wav", r"\#1.wav"]]
    ['a b.wav', '', 'x.wav', 'take#2.wav', ' lead.wav', '#1.wav']
    """
    chars: List[Tuple[str, bool]] = []  # (character, escaped)
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\" and line[index + 1 : index + 2] in ("#", " ", "\\"):
            chars.append((line[index + 1], True))
            index += 2
            continue
        after_space = not chars or (chars[-1][0].isspace() and not chars[-1][1])
        if char == "#" and after_space:
            break
        chars.append((char, False))
        index += 1
    start, stop = 0, len(chars)
    while start < stop and chars[start][0].isspace() and not chars[start][1]:
        start += 1
    while stop > start and chars[stop - 1][0].isspace() and not chars[stop - 1][1]:
        stop -= 1
    return "".join(char for char, _ in chars[start:stop])


def _entries_of_list(list_file: Path) -> List[str]:
    """The paths a list file names (see :func:`_list_entry`); a UTF-8 byte-order mark is ignored."""
    text = list_file.read_text(encoding="utf-8-sig")
    entries = (_list_entry(line) for line in text.splitlines())
    return [entry for entry in entries if entry]


def _expand(argument: str) -> Tuple[List[AudioInput], List[Failure]]:
    path = Path(argument)
    if path.is_dir():
        wavs, problems = _wav_files_under(path)
        found = [AudioInput(_name_from_relative(str(wav.relative_to(path))), wav) for wav in wavs]
        if not found and not problems:
            return [], [Failure(argument, "folder holds no .wav file")]
        return found, problems
    if path.suffix.lower() in LIST_SUFFIXES:
        if not path.is_file():
            reason = not_regular_file_reason(path)
            return [], [Failure(argument, f"list file is {reason}" if reason else "no such list file")]
        try:
            entries = _entries_of_list(path)
        except (OSError, UnicodeDecodeError) as error:
            return [], [Failure(argument, f"cannot read list file: {error}")]
        if not entries:
            return [], [Failure(argument, "list file names no recording")]
        base = path.parent
        return [AudioInput(_name_from_relative(entry), base / entry) for entry in entries], []
    return [AudioInput(_name_from_relative(path.name), path)], []


def collect_inputs(arguments: Iterable[str]) -> Tuple[List[AudioInput], List[Failure]]:
    """Turn command-line arguments into the recordings to embed.

    Parameters
    ----------
    arguments : iterable of str
        WAV files, folders (searched recursively for ``*.wav``, in sorted
        order) and list files (``.txt``, ``.lst``, ``.list``: one path per
        line, relative to the list file's folder; ``#`` starts a comment).

    Returns
    -------
    inputs : list of AudioInput
        In argument order; a file reached twice is kept once.
    problems : list of Failure
        Folders without recordings and unreadable list files. Files that do
        not exist are reported later, when they are read.

    Raises
    ------
    InputConflict
        If two different files would get the same name in the output.
    """
    inputs: List[AudioInput] = []
    problems: List[Failure] = []
    by_name = {}
    for argument in arguments:
        found, failed = _expand(argument)
        problems.extend(failed)
        for item in found:
            key = os.path.abspath(item.path)
            if item.name in by_name:
                if by_name[item.name] == key:
                    continue
                raise InputConflict(
                    f"two inputs would both be stored as '{item.name}': {by_name[item.name]} and {key}; "
                    "pass their common folder (or a list file) instead, so that names keep the sub-folders"
                )
            if not item.name:
                problems.append(Failure(str(item.path), "cannot make an output name from this path"))
                continue
            if not utf8_encodable(item.name):
                problems.append(Failure(repr(os.fsencode(item.path)), "the file name is not UTF-8 text: rename it"))
                continue
            if not utf8_encodable(key):
                problems.append(
                    Failure(repr(os.fsencode(key)), "a folder of its path is not UTF-8 text: rename the folder")
                )
                continue
            by_name[item.name] = key
            inputs.append(item)
    return inputs, problems


def read_wav(path: PathLike) -> Tuple[int, numpy.ndarray]:
    """Read a WAV file as ``(rate, samples)`` with :func:`scipy.io.wavfile.read`.

    Raises
    ------
    FileNotFoundError
        If there is no such file (or a folder, or a broken link).
    ValueError
        If the path is not a regular file (a FIFO, a device, a socket: never
        opened, since reading one may never end), or the file is not a WAV
        file scipy can read. scipy's parser meets a
        damaged header with whatever error it runs into (``struct.error``,
        ``ZeroDivisionError``, ``UnboundLocalError``...); all become this one.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        if not os.path.lexists(path):
            raise FileNotFoundError("no such file")
        if not os.path.exists(path):
            raise FileNotFoundError("a broken symbolic link")
        if os.path.isdir(path):
            raise FileNotFoundError("a folder, not a WAV file")
        raise ValueError(f"{not_regular_file_reason(path)}; give WAV files as regular files")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)
            rate, samples = scipy.io.wavfile.read(path)
    except (ValueError, EOFError, OSError) as error:
        raise ValueError(f"not a readable WAV file ({error})") from None
    except Exception as error:  # noqa: BLE001 - a damaged header, met by scipy's parser as it comes
        raise ValueError(f"not a readable WAV file (damaged header: {type(error).__name__}: {error})") from None
    return int(rate), samples


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    if isinstance(error, (ValueError, FileNotFoundError)) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _embed_one(extractor: EmbeddingExtractor, audio: Tuple[int, numpy.ndarray], chunk_length: int, batch_size: int):
    if chunk_length == 0:
        return extractor(audio)
    specs = extractor.spectrogram(audio)
    return extractor.extract_embeddings(extractor.network, specs, chunk_length, batch_size)


def _embed_group(
    extractor: EmbeddingExtractor, loaded: List[Tuple[AudioInput, Tuple[int, numpy.ndarray]]], batch_size: int
) -> Optional[numpy.ndarray]:
    """Rows of a whole group through ``embed_many``, or None if any recording fails."""
    try:
        return extractor.embed_many([audio for _, audio in loaded], batch_size=batch_size)
    except Exception:  # noqa: BLE001 - retried one by one, which names the culprit
        logger.debug("a group of %d recordings failed; embedding them one at a time", len(loaded), exc_info=True)
        return None


def embed_inputs(
    extractor: EmbeddingExtractor,
    inputs: Sequence[AudioInput],
    chunk_length: int = 0,
    batch_size: int = 8,
    on_progress: Optional[Callable[[int], None]] = None,
    regions: Optional[RegionRequest] = None,
) -> Iterator[Union[Embedded, Failure]]:
    """Embed each input, yielding its rows or the reason it failed, in input order.

    Parameters
    ----------
    extractor : EmbeddingExtractor
        A loaded extractor (its network is used as is).
    inputs : sequence of AudioInput
        The recordings.
    chunk_length : int
        0 for one embedding per recording; otherwise the chunk length ``L``
        in frames (at least 37) and one row per chunk.
    batch_size : int
        Recordings per forward pass (chunks per pass when ``chunk_length`` > 0).
    on_progress : callable, optional
        Called with the number of inputs just finished.
    regions : RegionRequest, optional
        Embed windows or segments of each recording instead (one row each,
        with its times); ``chunk_length`` must then be 0.

    Yields
    ------
    Embedded or Failure
        A failure never stops the others: a group holding a bad recording is
        embedded again one recording at a time.
    """
    group_size = batch_size if chunk_length == 0 and regions is None else 1
    for start in range(0, len(inputs), group_size):
        group = inputs[start : start + group_size]
        loaded, outcomes = [], {}
        for item in group:
            try:
                loaded.append((item, read_wav(item.path)))
            except (OSError, ValueError) as error:
                outcomes[item] = Failure(str(item.path), _one_line(error))
        rows = _embed_group(extractor, loaded, batch_size) if chunk_length == 0 and len(loaded) > 1 else None
        for index, (item, audio) in enumerate(loaded):
            try:
                if regions is not None:
                    found = regions.embed(extractor, item.name, audio)
                    outcomes[item] = Embedded(item, found.rows, audio[0], _length(audio), found.times, found.labels)
                    continue
                found = rows[index : index + 1] if rows is not None else _embed_one(extractor, audio, chunk_length, batch_size)
                outcomes[item] = Embedded(item, numpy.asarray(found, dtype=numpy.float32), audio[0], _length(audio))
            except Exception as error:  # noqa: BLE001 - one bad recording must not stop the others
                logger.debug("embedding %s failed", item.path, exc_info=True)
                outcomes[item] = Failure(str(item.path), _one_line(error))
        for item in group:
            yield outcomes[item]
        if on_progress is not None:
            on_progress(len(group))


def _length(audio: Tuple[int, numpy.ndarray]) -> int:
    return int(numpy.shape(audio[1])[0]) if numpy.ndim(audio[1]) else 0


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


def rows_table_path(npy_path: PathLike) -> Path:
    """The CSV beside an ``.npy`` output naming its rows (``x.npy`` → ``x.rows.csv``)."""
    path = Path(npy_path)
    return path.with_name(path.stem + ".rows.csv")


def _write_hdf5(results: Sequence[Embedded], target: Path, attributes: dict) -> None:
    with h5py.File(target, "w") as hdf5:
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
                dataset.attrs["labels"] = result.labels


def _row_labels(results: Sequence[Embedded]) -> Iterator[Tuple[str, int, str]]:
    for result in results:
        for chunk in range(len(result.rows)):
            yield result.item.name, chunk, os.path.abspath(result.item.path)


def _time_columns(results: Sequence[Embedded]) -> List[str]:
    """``start``, ``end`` (and ``label``) columns when the rows are windows or segments."""
    if all(result.times is None for result in results):
        return []
    return ["start", "end"] + (["label"] if any(result.labels is not None for result in results) else [])


def _time_fields(results: Sequence[Embedded], columns: Sequence[str]) -> Iterator[List[str]]:
    """The values of :func:`_time_columns` for every row, in row order (seconds to the microsecond)."""
    for result in results:
        for index in range(len(result.rows)):
            fields = [] if not columns else [format(float(t), ".6f") for t in result.times[index]]
            if "label" in columns:
                fields.append("" if result.labels is None else result.labels[index])
            yield fields


def _write_csv(results: Sequence[Embedded], target: Path) -> None:
    width = results[0].rows.shape[1]
    columns = _time_columns(results)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "chunk"] + columns + [f"e{i}" for i in range(width)])
        rows = (row for result in results for row in result.rows)
        for (name, chunk, _), times, row in zip(_row_labels(results), _time_fields(results, columns), rows):
            writer.writerow([name, chunk] + times + [format(float(value), ".9g") for value in row])


def _write_rows_table(results: Sequence[Embedded], target: Path) -> None:
    columns = _time_columns(results)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "name", "chunk", "source"] + columns)
        for row, (name, chunk, source), times in zip(
            range(sum(len(result.rows) for result in results)), _row_labels(results), _time_fields(results, columns)
        ):
            writer.writerow([row, name, chunk, source] + times)


def output_files(path: PathLike) -> List[Path]:
    """The files an output writes: ``path``, plus its row table for ``.npy``."""
    target = Path(path)
    return [target] + ([rows_table_path(target)] if output_format(target) == "npy" else [])


def check_names(items: Sequence[AudioInput], path: PathLike) -> None:
    """Refuse names that the output at ``path`` cannot hold side by side.

    In HDF5 a name is a dataset and each of its ``/``-separated prefixes a
    group, so ``sub`` (from ``sub.wav``) and ``sub/x`` (from ``sub/x.wav``)
    cannot both be stored. CSV and ``.npy`` outputs hold names as text.

    Raises
    ------
    InputConflict
        Naming both inputs.
    """
    if output_format(path) != "hdf5":
        return
    by_name = {item.name: item for item in items}
    for item in items:
        parts = item.name.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in by_name:
                raise InputConflict(
                    f"'{prefix}' would be both a recording and a group of recordings in {path}: "
                    f"{by_name[prefix].path} and {item.path}; rename one of them, or write a .csv or .npy output"
                )


def rehearse_output(
    items: Sequence[AudioInput], path: PathLike, attributes: Optional[dict] = None, width: int = 128
) -> None:
    """Write the output once with placeholder rows to temporary files, then remove them.

    Every cause of failure of the final :func:`write_output` that is knowable
    before the embedding (names the format cannot hold, text that cannot be
    encoded, a target that is not a regular file, a folder that cannot be
    written) shows here, before hours of work instead of after.

    Raises
    ------
    OSError, ValueError, TypeError
        As :func:`write_output` would, naming the problem.
    """
    placeholders = [Embedded(item, numpy.zeros((1, width), numpy.float32), 16000, 16000) for item in items]
    if not placeholders:
        return
    targets = output_files(path)
    for target in targets:
        reason = not_regular_file_reason(target)
        if reason:
            raise OSError(f"{target} is {reason}")
    temporaries = [temporary_name(target) for target in targets]
    try:
        _write_files(placeholders, temporaries, output_format(path), attributes or {})
    finally:
        for temporary in temporaries:
            if temporary.exists():
                temporary.unlink()


def _write_files(results: Sequence[Embedded], files: Sequence[Path], kind: str, attributes: dict) -> None:
    if kind == "hdf5":
        _write_hdf5(results, files[0], attributes)
    elif kind == "csv":
        _write_csv(results, files[0])
    else:
        with open(files[0], "wb") as handle:
            numpy.save(handle, numpy.vstack([result.rows for result in results]).astype(numpy.float32))
        _write_rows_table(results, files[1])


def write_output(results: Sequence[Embedded], path: PathLike, attributes: Optional[dict] = None) -> List[Path]:
    """Write the embeddings to ``path`` in the format its suffix names, atomically.

    * ``.h5``/``.hdf5``/``.hdf``: one float32 dataset per input, named as the
      input (``sub/x`` creates group ``sub``), with attributes ``source``,
      ``sample_rate`` and ``duration_s``; ``attributes`` go on the file.
    * ``.npy``: all rows stacked into one float32 ``(rows, D)`` array, plus
      ``<stem>.rows.csv`` (``row,name,chunk,source``) saying which input
      each row belongs to.
    * ``.csv``: a header ``name,chunk,e0,...`` and one line per row.

    Windows and segments (rows with ``times``) carry their start and end
    seconds: HDF5 attributes ``start`` and ``end`` (and ``labels``) on each
    dataset; ``start``, ``end`` (and ``label``) columns after ``chunk`` in
    the CSV output and in the ``.npy`` output's row table.

    Every file is written under a temporary name beside its target, flushed
    and fsynced, and renamed into place only once all of them are complete
    (see :mod:`bob.learn.pytorch.atomic` for permissions and symbolic links).

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    ValueError
        If ``results`` is empty or the suffix is unknown.
    """
    if not results:
        raise ValueError("no embedding to write")
    targets = output_files(path)
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(replacing(each, what="embeddings")) for each in targets]
        _write_files(results, temporaries, output_format(path), attributes or {})
    return targets
