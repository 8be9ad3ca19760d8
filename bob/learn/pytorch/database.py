"""bob databases over a folder of your own recordings.

:func:`recordings_database` writes the CSV protocol files that bob's
:class:`~bob.bio.base.database.CSVDatabase` reads, for a folder of wav files
with one speaker per file, and returns the database, ready for
``bob bio pipeline simple``. The audio of each sample is read with
``scipy.io.wavfile.read``, i.e. as the ``(rate, samples)`` pair the
extractors expect (mono 16-bit PCM works best).

Protocol layout written (``<protocol>/<group>/``)::

    for_enrolling.csv   path,subject_id,template_id   (template_id = speaker)
    for_probing.csv     path,subject_id,template_id   (template_id = path)

``path`` is the file's path relative to the recordings folder, without the
extension. Each speaker's first ``enroll_per_speaker`` files (in sorted
order) form the speaker's model; every other file is a probe scored against
every model.

With ``cohort_speakers``, those speakers' recordings are set aside as the
score-normalisation cohort, enrolled and probed nowhere, and listed in the
files bob's score normalisation reads (one template per recording)::

    train/for_znorm.csv  path,subject_id,template_id   (template_id = path)
    train/for_tnorm.csv  path,subject_id,template_id   (template_id = path)

``bob bio pipeline score-norm`` reads them for Z- and T-norm; S-norm and
AS-norm run through :class:`bob.learn.pytorch.scoring.PipelineScoreSNorm`
with ``database.treferences()`` as the cohort.
"""
import contextlib
import csv
import io as _io
import logging
import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Sequence, TypedDict, Union, Unpack

import scipy.io.wavfile
from sklearn.pipeline import make_pipeline

from .atomic import replacing
from .bob_imports import CSVDatabase, FileSampleLoader
from .io import utf8_encodable

__all__ = ["read_speakers", "write_csv_protocol", "csv_database", "recordings_database"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Speakers = Union[Mapping, PathLike, None]

COLUMNS = ("path", "subject_id", "template_id")


class ProtocolOptions(TypedDict, total=False):
    """The keyword arguments of :func:`write_csv_protocol`, which :func:`recordings_database` passes on."""

    protocol: str
    enroll_per_speaker: int
    group: str
    extension: str
    cohort_speakers: Sequence[str]


def read_speakers(csv_file: PathLike) -> dict:
    """Read a ``file,speaker`` table (other columns are ignored).

    Parameters
    ----------
    csv_file : str or os.PathLike
        CSV file with a header naming at least the columns ``file`` (path of
        the recording relative to the recordings folder, with its extension)
        and ``speaker``.

    Returns
    -------
    dict
        ``{file: speaker}``.

    Raises
    ------
    ValueError
        If the file is not UTF-8 text (a byte-order mark is allowed), a column
        is missing, a file is listed twice or a row has no speaker.
    """
    with open(csv_file, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets' "CSV UTF-8"
        reader = csv.DictReader(handle)
        try:
            rows = list(reader)
            fieldnames = set(reader.fieldnames or ())
        except UnicodeDecodeError as error:
            raise ValueError(f"{csv_file} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    missing = {"file", "speaker"} - fieldnames
    if missing:
        raise ValueError(f"{csv_file} needs the columns 'file' and 'speaker'; missing: {sorted(missing)}")
    speakers = {}
    for line, row in enumerate(rows, start=2):
        name = Path(row["file"]).as_posix()
        if name in speakers:
            raise ValueError(f"{csv_file} lists {name} twice")
        speakers[name] = _speaker_name(row["speaker"], f"{csv_file}, line {line} ({name})")
    return speakers


def _speaker_name(value: Any, where: str) -> str:
    """``value`` as a speaker name, or ``ValueError`` naming ``where`` if it is missing or blank."""
    if value is None or not str(value).strip():
        raise ValueError(f"{where}: no speaker given")
    return str(value)


def _recordings(folder: Path, extension: str) -> list:
    """Relative posix paths (with extension) of the recordings below ``folder``, sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"recordings folder {folder} does not exist")
    found = sorted(path.relative_to(folder).as_posix() for path in folder.rglob(f"*{extension}") if path.is_file())
    if not found:
        raise ValueError(f"no '*{extension}' files in {folder}; pass extension= for other file names")
    for name in found:
        if not utf8_encodable(name):
            raise ValueError(
                f"the name of {os.fsencode(name)!r} in {folder} is not UTF-8 text, which the protocol's UTF-8 CSV "
                "files cannot hold: rename the file or folder (convmv -f latin1 -t utf8 converts Latin-1 names)"
            )
    return found


def _speaker_of(files: list, speakers: Speakers, folder: Path) -> dict:
    """``{file: speaker}`` for every file, from the table or the files' parent folders."""
    if speakers is None:
        flat = [name for name in files if "/" not in name]
        if flat:
            raise ValueError(
                f"cannot tell the speaker of {flat[0]} (and {len(flat) - 1} other files) in {folder}: put each "
                "speaker's files in a subfolder named after the speaker, or pass speakers= (a dict or a "
                "file,speaker CSV)"
            )
        return _speakers_from_folders(files, folder)
    table = speakers if isinstance(speakers, Mapping) else read_speakers(speakers)
    table = {Path(name).as_posix(): _speaker_name(speaker, f"speaker of {name}") for name, speaker in table.items()}
    unknown = [name for name in files if name not in table]
    if unknown:
        raise ValueError(
            f"no speaker given for {len(unknown)} recordings of {folder}, e.g. {unknown[:3]}; the speakers table "
            "must name every file by its path relative to the recordings folder, with its extension"
        )
    absent = sorted(set(table) - set(files))
    if absent:
        logger.warning("%d files of the speakers table are not in %s, e.g. %s", len(absent), folder, absent[:3])
    return {name: table[name] for name in files}


def _speakers_from_folders(files: list, folder: Path) -> dict:
    """``{file: name of its parent folder}``, refusing two different folders of one name.

    In ``alice/s1/1.wav`` and ``bob/s1/1.wav`` the parent folders are both
    ``s1``: taking them as one speaker would score bob's recordings as alice's.
    """
    parents = {name: name.rsplit("/", 1)[0] for name in files}
    by_speaker = defaultdict(set)
    for parent in parents.values():
        by_speaker[parent.rsplit("/", 1)[-1]].add(parent)
    shared = {speaker: sorted(paths) for speaker, paths in by_speaker.items() if len(paths) > 1}
    if shared:
        speaker, paths = sorted(shared.items())[0]
        raise ValueError(
            f"folders {', '.join(paths[:3])} of {folder} would all be speaker '{speaker}': the speaker is the "
            "name of a recording's folder, so pass speakers= (a dict or a file,speaker CSV) for nested folders"
        )
    return {name: parent.rsplit("/", 1)[-1] for name, parent in parents.items()}


def _split(files: list, speaker_of: dict, enroll_per_speaker: int, extension: str) -> tuple:
    """Enrolment and probe rows ``(path, subject_id, template_id)``."""
    by_speaker = defaultdict(list)
    for name in files:
        by_speaker[speaker_of[name]].append(name[: -len(extension)] if extension else name)
    enroll, probe = [], []
    for speaker in sorted(by_speaker):
        paths = by_speaker[speaker]
        enroll.extend((path, speaker, speaker) for path in paths[:enroll_per_speaker])
        probe.extend((path, speaker, path) for path in paths[enroll_per_speaker:])
    return enroll, probe


def _cohort_rows(files: list, speaker_of: dict, cohort_speakers: Sequence[str], extension: str, folder: Path) -> list:
    """Rows ``(path, subject_id, template_id=path)`` of the cohort speakers' recordings."""
    if isinstance(cohort_speakers, str):
        raise TypeError(f"cohort_speakers must be a list of speaker names, got the string {cohort_speakers!r}")
    absent = sorted(set(cohort_speakers) - set(speaker_of.values()))
    if absent:
        raise ValueError(f"cohort speakers {', '.join(map(repr, absent))} have no recording in {folder}")
    rows = []
    for name in files:
        if speaker_of[name] in set(cohort_speakers):
            path = name[: -len(extension)] if extension else name
            rows.append((path, speaker_of[name], path))
    return rows


def _csv_text(rows: list) -> str:
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def _holds(path: Path, text: str) -> bool:
    try:
        return path.is_file() and path.read_bytes() == text.encode("utf-8")
    except OSError:
        return False


def _write_if_changed(files: Mapping[Path, str]) -> None:
    """Write each ``{path: text}`` that does not hold its text yet, all renamed into place together.

    Each is written to a temporary file first; none is renamed until all are
    written, so a failure leaves the old set of files, not a mix.
    """
    changed = {path: text for path, text in files.items() if not _holds(path, text)}
    with contextlib.ExitStack() as stack:
        for path, text in changed.items():
            temporary = stack.enter_context(replacing(path, what="the protocol file"))
            temporary.write_text(text, encoding="utf-8", newline="")


def write_csv_protocol(
    recordings: PathLike,
    protocols: PathLike,
    speakers: Speakers = None,
    *,
    protocol: str = "default",
    enroll_per_speaker: int = 1,
    group: str = "dev",
    extension: str = ".wav",
    cohort_speakers: Sequence[str] = (),
) -> Path:
    """Write ``for_enrolling.csv`` and ``for_probing.csv`` for the recordings of a folder.

    Parameters
    ----------
    recordings : str or os.PathLike
        Folder searched recursively for ``*<extension>`` files.
    protocols : str or os.PathLike
        Folder receiving ``<protocol>/<group>/for_enrolling.csv`` and
        ``for_probing.csv``. Files already holding the same text are left
        untouched; others are replaced atomically.
    speakers : dict or str or os.PathLike, optional
        Speaker of each file: a ``{relative path with extension: speaker}``
        dict or a CSV file with ``file`` and ``speaker`` columns (see
        :func:`read_speakers`). By default each file's parent folder names
        its speaker.
    protocol : str
        Name of the protocol folder.
    enroll_per_speaker : int
        Files enrolled per speaker (the first ones in sorted order); a
        speaker with no more files is enrolled only.
    group : str
        ``dev`` or ``eval``.
    extension : str
        File name ending of the recordings.
    cohort_speakers : sequence of str
        Speakers whose recordings form the score-normalisation cohort:
        written to ``<protocol>/train/for_znorm.csv`` and ``for_tnorm.csv``
        and left out of enrolment and probing.

    Returns
    -------
    pathlib.Path
        The folder holding the two CSV files.

    Raises
    ------
    FileNotFoundError
        If ``recordings`` is not a folder.
    ValueError
        If there are no recordings, a recording has no speaker, a cohort
        speaker has no recording, or no file is left for probing.
    """
    from .embedding import whole_number  # here: the module stays free of PyTorch for dask's scheduler

    enroll_per_speaker = whole_number("enroll_per_speaker", enroll_per_speaker, minimum=1)
    if group not in ("dev", "eval"):
        raise ValueError(f"group must be 'dev' or 'eval', got {group!r}")
    folder = Path(recordings)
    files = _recordings(folder, extension)
    speaker_of = _speaker_of(files, speakers, folder)
    cohort = _cohort_rows(files, speaker_of, cohort_speakers, extension, folder)
    kept = [name for name in files if speaker_of[name] not in set(cohort_speakers)]
    enroll, probe = _split(kept, speaker_of, enroll_per_speaker, extension)
    if not probe:
        raise ValueError(
            f"no recording of {folder} is left for probing with enroll_per_speaker={enroll_per_speaker}; "
            "lower it or add recordings"
        )
    target = Path(protocols) / protocol / group
    files_to_write = {target / "for_enrolling.csv": _csv_text(enroll), target / "for_probing.csv": _csv_text(probe)}
    if cohort:
        train = Path(protocols) / protocol / "train"
        files_to_write.update({train / "for_znorm.csv": _csv_text(cohort), train / "for_tnorm.csv": _csv_text(cohort)})
        logger.info("protocol %s: a cohort of %d recordings in %s", protocol, len(cohort), train)
    _write_if_changed(files_to_write)
    logger.info("protocol %s: %d enrolment and %d probe files in %s", protocol, len(enroll), len(probe), target)
    return target


def csv_database(
    recordings: PathLike,
    protocols: PathLike,
    *,
    protocol: str = "default",
    name: str = "recordings",
    extension: str = ".wav",
) -> CSVDatabase:
    """A :class:`~bob.bio.base.database.CSVDatabase` over existing protocol files, reading audio as ``(rate, samples)``.

    The files are those :func:`write_csv_protocol` writes, or your own in the
    same layout (see the module's description); nothing is written.

    Parameters
    ----------
    recordings : str or os.PathLike
        Folder the ``path`` column is relative to.
    protocols : str or os.PathLike
        Folder holding ``<protocol>/{dev,eval}/for_enrolling.csv`` and
        ``for_probing.csv``.
    protocol : str
        Protocol folder to use.
    name : str
        Name of the database in bob's messages.
    extension : str
        Appended to ``path`` to find each file.
    """
    loader = FileSampleLoader(
        data_loader=scipy.io.wavfile.read,
        dataset_original_directory=os.fspath(recordings),
        extension=extension,
    )
    return CSVDatabase(
        name=name,
        protocol=protocol,
        dataset_protocols_path=os.fspath(protocols),
        transformer=make_pipeline(loader),
    )


def recordings_database(
    recordings: PathLike,
    protocols: PathLike,
    speakers: Speakers = None,
    *,
    name: str = "recordings",
    **options: Unpack[ProtocolOptions],
) -> CSVDatabase:
    """Write the protocol files of a folder of recordings and return its database.

    Combines :func:`write_csv_protocol` and :func:`csv_database`. Use it in a
    database configuration file::

        from bob.learn.pytorch.database import recordings_database

        database = recordings_database("/data/my-recordings", "/data/my-protocols", "/data/speakers.csv")

    and run ``bob bio pipeline simple -p dltresnet34-voxceleb -d that_file.py -o results``.

    Parameters
    ----------
    recordings, protocols, speakers
        As for :func:`write_csv_protocol`.
    name : str
        Name of the database in bob's messages.
    **options
        The keyword arguments of :func:`write_csv_protocol` (``protocol``,
        ``enroll_per_speaker``, ``group``, ``extension``, ``cohort_speakers``);
        ``protocol`` and ``extension`` go to :func:`csv_database` too.
    """
    write_csv_protocol(recordings, protocols, speakers, **options)
    shared: Dict[str, Any] = {key: options[key] for key in ("protocol", "extension") if key in options}
    return csv_database(recordings, protocols, name=name, **shared)
