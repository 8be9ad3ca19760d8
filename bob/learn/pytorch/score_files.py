"""Files around scoring: embeddings written by ``extract-audio``, trial lists, CSV score files.

* :func:`read_embeddings` reads the three outputs of ``bob pytorch
  extract-audio`` (HDF5, ``.npy`` record array, CSV) as
  ``{name: rows}``; it is the one place that knows those formats.
* :func:`read_trials` reads trial lists, one ``enrolment-key probe-key
  [target|nontarget]`` per line.
* :func:`write_scores` writes the CSV score files ``bob bio metrics`` reads
  (``probe_template_id, probe_subject_id, bio_ref_template_id,
  bio_ref_subject_id, score``; a trial is a target trial when the two subject
  ids are equal), with the scores' provenance in extra columns, which
  ``bob bio metrics`` ignores and ``bob pytorch calibrate`` reads back with
  :func:`read_scores`.
"""
import csv
import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import h5py
import numpy

from .atomic import replacing

__all__ = [
    "EmbeddingTable", "Trial", "ScoreProvenance", "ScoreTable",
    "read_embeddings", "template_embedding", "read_trials", "all_pairs", "subject_of",
    "write_scores", "read_scores", "file_sha256", "SCORE_COLUMNS", "NORMS",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The columns ``bob bio metrics`` reads from a CSV score file.
SCORE_COLUMNS = ("probe_template_id", "probe_subject_id", "bio_ref_template_id", "bio_ref_subject_id", "score")
#: Score normalisations, as named on the command line and in score and calibration files.
NORMS = ("none", "s-norm", "as-norm")
LABELS = {"target": True, "nontarget": False}
_EMBEDDING_COLUMN = re.compile(r"e(\d+)")


@dataclass(frozen=True)
class EmbeddingTable:
    """Embedding rows by name, and the attributes of the file they came from."""

    rows: Dict[str, numpy.ndarray]
    attributes: Dict[str, object]

    @property
    def width(self) -> int:
        return next(iter(self.rows.values())).shape[1]


@dataclass(frozen=True)
class Trial:
    """One comparison: enrolment key, probe key, and whether it is a target trial (None: not said)."""

    enrolment: str
    probe: str
    target: Optional[bool] = None


@dataclass(frozen=True)
class ScoreProvenance:
    """What a set of scores was made with; a calibration is valid only for scores of the same provenance.

    Attributes
    ----------
    network : str or None
        Registered network name (``dltresnet34``...), None when the embeddings do not say.
    model_sha256 : str or None
        SHA-256 of the model file, None when unknown.
    norm : str
        ``none``, ``s-norm`` or ``as-norm``.
    cohort_size : int or None
        Cohort recordings, for a normalisation.
    top_n : int or None
        Highest cohort scores kept per side, for ``as-norm``.
    """

    network: Optional[str] = None
    model_sha256: Optional[str] = None
    norm: str = "none"
    cohort_size: Optional[int] = None
    top_n: Optional[int] = None

    def as_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ScoreTable:
    """Scores with their target labels (as ``bob bio metrics`` tells them) and provenance."""

    scores: numpy.ndarray
    targets: numpy.ndarray
    provenance: ScoreProvenance


# -- embeddings ---------------------------------------------------------------------------------


def read_embeddings(path: PathLike) -> EmbeddingTable:
    """Read an embeddings file written by ``bob pytorch extract-audio``, by its suffix.

    * ``.h5``/``.hdf5``/``.hdf``: each 2-D floating-point dataset is the
      rows of the recording it is named after (``sub/x`` for a dataset in
      group ``sub``); datasets of another width than the widest (time
      stamps, say) are not embeddings and are skipped; the file's attributes
      (``network``, ``model_file``...) are kept.
    * ``.npy``: the record array of ``extract-audio``, one record per row,
      named by its ``name`` field, the vector in its ``embedding`` field.
    * ``.csv``: a ``name`` column and the embedding columns ``e0``, ``e1``...
      (other columns are skipped).

    Returns
    -------
    EmbeddingTable
        ``{name: float64 (n, D)}`` in file order; a name's rows are its chunks.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the suffix is unknown or the file holds no embeddings in that format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no embeddings file {path}")
    suffix = path.suffix.lower()
    readers = {".h5": _read_hdf5, ".hdf5": _read_hdf5, ".hdf": _read_hdf5, ".npy": _read_npy, ".csv": _read_csv}
    if suffix not in readers:
        raise ValueError(f"{path}: cannot tell the embeddings format from '{suffix}'; use the .h5, .npy or .csv "
                         "file 'bob pytorch extract-audio' wrote")
    table = readers[suffix](path)
    if not table.rows:
        raise ValueError(f"{path} holds no embeddings")
    return table


def _read_hdf5(path: Path) -> EmbeddingTable:
    try:
        hdf5 = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not an HDF5 file ({error})") from None
    found: Dict[str, numpy.ndarray] = {}
    with hdf5:
        def visit(name: str, item: object) -> None:
            if isinstance(item, h5py.Dataset) and item.ndim == 2 and item.dtype.kind == "f":
                found[name] = numpy.asarray(item[()], dtype=numpy.float64)

        hdf5.visititems(visit)
        attributes = {key: _plain(value) for key, value in hdf5.attrs.items()}
    if not found:
        return EmbeddingTable({}, attributes)
    width = max(rows.shape[1] for rows in found.values())
    return EmbeddingTable({name: rows for name, rows in found.items() if rows.shape[1] == width}, attributes)


def _plain(value: object) -> object:
    return value.item() if isinstance(value, numpy.generic) else value


def _read_npy(path: Path) -> EmbeddingTable:
    try:
        records = numpy.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path} is not an .npy file of 'bob pytorch extract-audio' ({error})") from None
    fields = records.dtype.names or ()
    if records.ndim != 1 or not {"name", "embedding"} <= set(fields):
        raise ValueError(f"{path} is not a record array with the fields 'name' and 'embedding' "
                         f"(shape {records.shape}, fields {', '.join(fields) or 'none'})")
    embeddings = numpy.asarray(records["embedding"], dtype=numpy.float64).reshape(len(records), -1)
    return EmbeddingTable(_group([str(name) for name in records["name"]], embeddings), {})


def _read_csv(path: Path) -> EmbeddingTable:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        lines = list(reader)
    numbered = sorted((int(match.group(1)), index) for index, column in enumerate(header)
                      if (match := _EMBEDDING_COLUMN.fullmatch(column)))
    if "name" not in header or not numbered or [n for n, _ in numbered] != list(range(len(numbered))):
        raise ValueError(f"{path} needs a 'name' column and embedding columns e0, e1, ...")
    columns = [index for _, index in numbered]
    name_column = header.index("name")
    try:
        values = numpy.array([[float(line[i]) for i in columns] for line in lines], dtype=numpy.float64)
    except (ValueError, IndexError) as error:
        raise ValueError(f"{path}: a row is not a full line of numbers ({error})") from None
    return EmbeddingTable(_group([line[name_column] for line in lines], values.reshape(len(lines), len(columns))), {})


def _group(names: Sequence[str], values: numpy.ndarray) -> Dict[str, numpy.ndarray]:
    order: Dict[str, List[int]] = {}
    for index, name in enumerate(names):
        order.setdefault(name, []).append(index)
    return {name: values[indices] for name, indices in order.items()}


def template_embedding(rows: numpy.ndarray) -> numpy.ndarray:
    """One vector for several rows (chunks, or several recordings): the mean of the L2-normalised rows, renormalised.

    >>> template_embedding(numpy.array([[2.0, 0.0], [0.0, 5.0]])).round(4)
    array([0.7071, 0.7071])
    """
    from .scoring import l2_normalise

    mean = l2_normalise(rows).mean(axis=0)
    norm = numpy.linalg.norm(mean)
    if norm == 0:
        raise ValueError("the rows cancel out: their mean direction is zero")
    return mean / norm


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file, read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- trials -------------------------------------------------------------------------------------


def read_trials(path: PathLike) -> List[Trial]:
    """Read a trial list: one ``enrolment-key probe-key [target|nontarget]`` per line.

    Blank lines and lines starting with ``#`` are skipped. Either every line
    has a label or none has.

    Raises
    ------
    ValueError
        Naming the line: a wrong number of fields, an unknown label, labels on
        some lines only, a trial listed twice, or a recording against itself
        labelled ``nontarget``.
    """
    trials: List[Trial] = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            trials.append(_trial(fields, f"{path}, line {number}"))
    if not trials:
        raise ValueError(f"{path} lists no trial")
    labelled = {trial.target is not None for trial in trials}
    if len(labelled) > 1:
        raise ValueError(f"{path}: some trials have a target/nontarget label and others not; label all or none")
    repeated = [pair for pair, count in Counter((t.enrolment, t.probe) for t in trials).items() if count > 1]
    if repeated:
        raise ValueError(f"{path} lists the trial {' '.join(repeated[0])} twice")
    return trials


def _trial(fields: List[str], where: str) -> Trial:
    if len(fields) not in (2, 3):
        raise ValueError(f"{where}: expected 'enrolment-key probe-key [target|nontarget]', got {len(fields)} fields")
    if len(fields) == 2:
        return Trial(fields[0], fields[1])
    if fields[2] not in LABELS:
        raise ValueError(f"{where}: the label must be 'target' or 'nontarget', got {fields[2]!r}")
    if fields[0] == fields[1] and not LABELS[fields[2]]:
        raise ValueError(f"{where}: {fields[0]} against itself cannot be a nontarget trial")
    return Trial(fields[0], fields[1], LABELS[fields[2]])


def all_pairs(keys: Sequence[str]) -> List[Trial]:
    """Every key against every later key, once (cosine and S-norm are symmetric)."""
    return [Trial(first, second) for index, first in enumerate(keys) for second in keys[index + 1 :]]


def subject_of(key: str) -> str:
    """The speaker of an unlabelled key: its folder (``alice/take1`` → ``alice``), else the key itself.

    ``extract-audio`` names the recordings of a folder by their path below it,
    so a folder per speaker gives each key its speaker, as for
    :func:`~bob.learn.pytorch.database.recordings_database`.
    """
    return key.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in key else key


# -- score files --------------------------------------------------------------------------------


def _subjects(trial: Trial) -> Tuple[str, str]:
    """``(probe_subject_id, bio_ref_subject_id)``: equal exactly for a target trial."""
    if trial.target is None:
        return subject_of(trial.probe), subject_of(trial.enrolment)
    return (trial.enrolment if trial.target else trial.probe), trial.enrolment


def write_scores(path: PathLike, trials: Sequence[Trial], scores: numpy.ndarray, provenance: ScoreProvenance) -> None:
    """Write a CSV score file that ``bob bio metrics`` reads, atomically.

    Columns: :data:`SCORE_COLUMNS`, then the fields of ``provenance``. The
    subject ids make each labelled trial a target trial exactly when its
    label says so (both are the enrolment key for ``target``); unlabelled
    trials take the keys' speakers from :func:`subject_of`.
    """
    extra = provenance.as_dict()
    with replacing(path, what="the scores") as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(SCORE_COLUMNS + tuple(extra))
            tail = ["" if value is None else value for value in extra.values()]
            for trial, score in zip(trials, scores):
                probe_subject, reference_subject = _subjects(trial)
                writer.writerow([trial.probe, probe_subject, trial.enrolment, reference_subject,
                                 format(float(score), ".10g")] + tail)


def read_scores(path: PathLike) -> ScoreTable:
    """Read a CSV score file: scores, target labels (``probe_subject_id == bio_ref_subject_id``), provenance.

    The provenance columns are those :func:`write_scores` adds; a score file
    without them (bob's own) has an unknown network and ``norm`` ``none``.

    Raises
    ------
    ValueError
        If a column ``bob bio metrics`` needs is missing, a score is not a
        number, or the provenance differs between rows.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        missing = [column for column in ("probe_subject_id", "bio_ref_subject_id", "score")
                   if column not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"{path} is not a CSV score file: no column {', '.join(missing)}")
    if not rows:
        raise ValueError(f"{path} holds no score")
    try:
        scores = numpy.array([float(row["score"]) for row in rows])
    except ValueError as error:
        raise ValueError(f"{path}: a score is not a number ({error})") from None
    targets = numpy.array([row["probe_subject_id"] == row["bio_ref_subject_id"] for row in rows])
    fields = [field.name for field in dataclasses.fields(ScoreProvenance)]
    seen = {tuple(row.get(field) or "" for field in fields) for row in rows}
    if len(seen) > 1:
        raise ValueError(f"{path} mixes scores made in different ways (columns {', '.join(fields)} differ)")
    return ScoreTable(scores, targets, _provenance(dict(zip(fields, seen.pop()))))


def _provenance(values: Dict[str, str]) -> ScoreProvenance:
    def number(text: str) -> Optional[int]:
        return int(text) if text else None

    return ScoreProvenance(
        network=values["network"] or None,
        model_sha256=values["model_sha256"] or None,
        norm=values["norm"] or "none",
        cohort_size=number(values["cohort_size"]),
        top_n=number(values["top_n"]),
    )

