"""Recordings given as files: finding them, reading them, embedding each one or saying why not.

The command line (``bob pytorch extract-audio``) and the demo take their
recordings from here. Nothing here prints: an input that gives no embedding
becomes a :class:`Failure` record (the file and one line of reason), and the
caller decides how to report it.

Each fact about a file is checked once, where the file is read
(:func:`read_wav`): whether it exists, whether it is a regular file, whether
its WAV header agrees with its length. Finding inputs (:func:`collect_inputs`)
only lists names.
"""
import errno
import logging
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
import scipy.io.wavfile

from .embedding import plan_chunks
from .io import utf8_encodable

if TYPE_CHECKING:
    from .regions import RegionRequest

__all__ = [
    "AudioInput",
    "Failure",
    "Embedded",
    "InputConflict",
    "LIST_SUFFIXES",
    "collect_inputs",
    "file_problem",
    "wav_length_problem",
    "read_wav",
    "embed_inputs",
]

logger = logging.getLogger(__name__)

#: Suffixes of files read as lists of recordings (one path per line).
LIST_SUFFIXES = (".txt", ".lst", ".list")

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

    ``times`` holds each row's start and end in seconds, ``(N, 2)``: the
    whole recording, the samples a chunk's frames cover, or the window or
    segment (:class:`~bob.learn.pytorch.regions.RegionRequest`). ``labels``
    are the segments' labels, when they have some.
    """

    item: AudioInput
    rows: numpy.ndarray
    rate: int
    n_samples: int
    times: Optional[numpy.ndarray] = None
    labels: Optional[List[str]] = None

    def row_times(self) -> numpy.ndarray:
        """``times``, or the whole recording's ``[[0, duration]]`` for a row without them."""
        if self.times is not None:
            return numpy.asarray(self.times, dtype=numpy.float64)
        duration = self.n_samples / self.rate if self.rate else 0.0
        return numpy.tile([0.0, duration], (len(self.rows), 1))


class InputConflict(ValueError):
    """Two different recordings would be stored under the same name."""


# -- one check of a path ------------------------------------------------------------------------


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISCHR: "not a regular file (a character device)",
        stat.S_ISBLK: "not a regular file (a block device)",
        stat.S_ISFIFO: "not a regular file (a FIFO (named pipe))",
        stat.S_ISSOCK: "not a regular file (a socket)",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file (a special file)")


def _too_long(path: str) -> str:
    longest = max((len(os.fsencode(part)) for part in Path(path).parts), default=0)
    name_max = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if longest > name_max:
        return f"file name too long (a name of {longest} bytes; the system allows {name_max})"
    return f"file name too long (a path of {len(os.fsencode(path))} bytes; the system allows {os.pathconf('/', 'PC_PATH_MAX')})"


def file_problem(path: PathLike) -> str:
    """Why ``path`` cannot be read as a file: ``""`` when it is a regular file (links followed).

    >>> file_problem("/dev/null"), file_problem("/no/such/file.wav")
    ('not a regular file (a character device)', 'no such file')
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            return _too_long(path)
        if error.errno == errno.ELOOP:
            return "not a regular file (a loop of symbolic links)"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return "a broken symbolic link" if os.path.lexists(path) else "no such file"
        return error.strerror or str(error)
    return "" if stat.S_ISREG(mode) else _kind(mode)


# -- finding inputs -----------------------------------------------------------------------------


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
    is searched once, with a warning; a sub-folder that cannot be read is
    reported. Entries are only listed: what they are is checked when they are
    read (:func:`read_wav`).
    """
    found: List[Path] = []
    problems: List[Failure] = []
    seen = {}

    def walk(current: Path) -> None:
        try:
            status = current.stat()
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as error:
            problems.append(Failure(str(current), f"cannot read folder: {error.strerror or error}"))
            return
        identity = (status.st_dev, status.st_ino)
        if identity in seen:
            logger.warning("%s is %s again (a symbolic link loop or a second link): searched once", current, seen[identity])
            return
        seen[identity] = current
        for entry in entries:
            path = current / entry.name
            if entry.is_dir():  # follows symbolic links
                walk(path)
            elif _is_wav(entry.name):
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
    problem = file_problem(path)
    if problem == "a folder":
        wavs, problems = _wav_files_under(path)
        found = [AudioInput(_name_from_relative(str(wav.relative_to(path))), wav) for wav in wavs]
        if not found and not problems:
            return [], [Failure(argument, "folder holds no .wav file")]
        return found, problems
    if path.suffix.lower() in LIST_SUFFIXES:
        if problem:
            return [], [Failure(argument, _list_file_problem(problem))]
        try:
            entries = _entries_of_list(path)
        except (OSError, UnicodeDecodeError) as error:
            return [], [Failure(argument, f"cannot read list file: {error}")]
        if not entries:
            return [], [Failure(argument, "list file names no recording")]
        base = path.parent
        return [AudioInput(_name_from_relative(entry), base / entry) for entry in entries], []
    return [AudioInput(_name_from_relative(path.name), path)], []


def _list_file_problem(problem: str) -> str:
    if problem == "no such file":
        return "no such list file"
    return f"list file is {problem}" if problem.startswith(("a ", "not a ")) else f"list file: {problem}"


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
        Folders without recordings, unreadable list files, names that are
        not UTF-8 text. Files that cannot be read are reported when they
        are read (:func:`read_wav`).

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


# -- reading ------------------------------------------------------------------------------------


def wav_length_problem(path: PathLike) -> str:
    """What a RIFF/WAVE file's header says about its length that the file contradicts: ``""`` when nothing.

    The chunks are walked from the RIFF header on: each must fit in the file,
    and together they must end where the file ends and where the RIFF size
    says (a missing pad byte after an odd-sized last chunk is tolerated). A
    ``data`` chunk declaring more bytes than follow it (a truncated copy), or
    fewer (samples left over after it), or a wrong RIFF size is a
    contradiction. Files that are not RIFF/WAVE are left to the WAV reader.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        header = handle.read(12)
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
            return ""
        order = "<" if header[:4] == b"RIFF" else ">"
        riff_end = 8 + struct.unpack(order + "I", header[4:8])[0]
        offset, odd, data_size = 12, False, None
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack(order + "4sI", handle.read(8))
            if offset + 8 + chunk_size > size:
                if chunk_id == b"data":
                    held = size - offset - 8
                    return f"its header declares {chunk_size} bytes of samples but the file holds {held} after it"
                break
            data_size = chunk_size if chunk_id == b"data" else data_size
            odd = bool(chunk_size & 1)
            offset += 8 + chunk_size + odd
    ends = (size,) + ((size + 1,) if odd else ())
    if offset not in ends:
        declared = "" if data_size is None else f" (its data chunk declares {data_size} bytes of samples)"
        return f"{size - offset} bytes after its last chunk are not a WAV chunk{declared}"
    if riff_end not in ends:
        return f"its header gives a length of {riff_end} bytes but the file has {size}"
    return ""


def read_wav(path: PathLike) -> Tuple[int, numpy.ndarray]:
    """Read a WAV file as ``(rate, samples)`` with :func:`scipy.io.wavfile.read`.

    Raises
    ------
    FileNotFoundError
        If there is no such file (or a folder, or a broken link), or its name
        is too long for the system.
    ValueError
        If the path is not a regular file (a FIFO, a device, a socket: never
        opened, since reading one may never end), the file is not a WAV file
        scipy can read, or its header contradicts its length (a truncated
        copy, or a header not updated after writing:
        :func:`wav_length_problem`). scipy's parser meets a damaged header
        with whatever error it runs into (``struct.error``,
        ``ZeroDivisionError``, ``UnboundLocalError``...); all become this one.
    """
    path = os.fspath(path)
    problem = file_problem(path)
    if problem == "a folder":
        raise FileNotFoundError("a folder, not a WAV file")
    if problem.startswith("not a regular file"):
        raise ValueError(f"{problem}; give WAV files as regular files")
    if problem:
        raise FileNotFoundError(problem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)
            rate, samples = scipy.io.wavfile.read(path)
        contradiction = wav_length_problem(path)
    except (ValueError, EOFError, OSError) as error:
        raise ValueError(f"not a readable WAV file ({error})") from None
    except Exception as error:  # noqa: BLE001 - a damaged header, met by scipy's parser as it comes
        raise ValueError(f"not a readable WAV file (damaged header: {type(error).__name__}: {error})") from None
    if contradiction:
        raise ValueError(
            f"WAV header contradicts the file's length: {contradiction} (a truncated or damaged file); "
            "repair or re-export it, e.g. 'sox in.wav out.wav'"
        )
    return int(rate), samples


# -- embedding ----------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    if isinstance(error, (ValueError, FileNotFoundError)) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _embed_one(extractor, audio: Tuple[int, numpy.ndarray], chunk_length: int, batch_size: int) -> numpy.ndarray:
    if chunk_length == 0:
        return extractor(audio)
    specs = extractor.spectrogram(audio)
    return extractor.extract_embeddings(extractor.network, specs, chunk_length, batch_size)


def _chunk_times(extractor, audio: Tuple[int, numpy.ndarray], chunk_length: int) -> numpy.ndarray:
    """Start and end seconds of the samples each embedded ``-L`` chunk's frames cover (chunks too short are dropped)."""
    record = extractor.pretrained
    front_end = record.front_end
    n_frames = front_end.n_frames(round(_length(audio) * front_end.sample_rate / audio[0]))
    chunks = [(a, b) for a, b in plan_chunks(n_frames, chunk_length) if b - a >= record.min_frames]
    hop, window = front_end.win_shift_ms / 1000.0, front_end.win_length_ms / 1000.0
    duration = _length(audio) / audio[0]
    return numpy.array([[a * hop, min((b - 1) * hop + window, duration)] for a, b in chunks], dtype=numpy.float64)


def _embed_group(extractor, loaded: List[Tuple[AudioInput, Tuple[int, numpy.ndarray]]], batch_size: int) -> Optional[numpy.ndarray]:
    """Rows of a whole group through ``embed_many``, or None if any recording fails."""
    try:
        return extractor.embed_many([audio for _, audio in loaded], batch_size=batch_size)
    except Exception:  # noqa: BLE001 - retried one by one, which names the culprit
        logger.debug("a group of %d recordings failed; embedding them one at a time", len(loaded), exc_info=True)
        return None


def embed_inputs(
    extractor,
    inputs: Sequence[AudioInput],
    chunk_length: int = 0,
    batch_size: int = 8,
    on_progress: Optional[Callable[[int], None]] = None,
    regions: Optional["RegionRequest"] = None,
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
        in frames (at least the network's ``min_frames``) and one row per chunk.
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
                times = _chunk_times(extractor, audio, chunk_length) if chunk_length else None
                outcomes[item] = Embedded(item, numpy.asarray(found, dtype=numpy.float32), audio[0], _length(audio), times)
            except Exception as error:  # noqa: BLE001 - one bad recording must not stop the others
                logger.debug("embedding %s failed", item.path, exc_info=True)
                outcomes[item] = Failure(str(item.path), _one_line(error))
        for item in group:
            yield outcomes[item]
        if on_progress is not None:
            on_progress(len(group))


def _length(audio: Tuple[int, numpy.ndarray]) -> int:
    return int(numpy.shape(audio[1])[0]) if numpy.ndim(audio[1]) else 0
