"""Which regions of each recording the command line embeds: windows or segments read from RTTM or CSV files.

:func:`read_segments` reads a segments file:

- **RTTM** (``.rttm``): ``SPEAKER <file> <channel> <onset> <duration> <NA> <NA>
  <speaker> ...`` lines; the file id names the recording (its name in the
  output: the file name without ``.wav``, or its path under the folder given),
  the speaker is the label; other line types are ignored;
- **CSV** (``.csv``): a header with ``start`` and ``end`` (seconds), optional
  ``label``, and optional ``file`` naming the recording (without it, the rows
  apply to every recording).

:class:`RegionRequest` holds what to embed (windows of ``window`` seconds
every ``step``, or the segments, optionally pooled by label) and
:meth:`RegionRequest.embed` returns the rows of one recording with their
start and end times and labels.
"""
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy

from . import windows

__all__ = ["Segment", "SegmentTable", "read_segments", "RegionRequest", "Regions"]

PathLike = Union[str, "os.PathLike[str]"]
#: Segments that apply to every recording (a CSV file without a ``file`` column).
ANY_RECORDING = ""

Segment = Tuple[float, float, Optional[str]]
SegmentTable = Dict[str, List[Segment]]


@dataclass(frozen=True)
class Regions:
    """The rows of one recording: float32 ``(N, D)`` embeddings, float64 ``(N, 2)`` times, and labels (or None)."""

    rows: numpy.ndarray
    times: numpy.ndarray
    labels: Optional[List[str]] = None


def _seconds(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {what} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {what} {text!r} is not a non-negative number of seconds")
    return value


def _read_rttm(path: Path) -> SegmentTable:
    table: SegmentTable = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#") or fields[0] != "SPEAKER":
            continue
        where = f"{path}, line {number}"
        if len(fields) < 8:
            raise ValueError(f"{where}: an RTTM SPEAKER line has at least 8 fields, got {len(fields)}")
        onset = _seconds(fields[3], "onset", where)
        duration = _seconds(fields[4], "duration", where)
        table.setdefault(fields[1], []).append((onset, onset + duration, fields[7]))
    return table


def _read_csv(path: Path) -> SegmentTable:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        if "start" not in columns or "end" not in columns:
            raise ValueError(
                f"{path}: a segments CSV needs a header with 'start' and 'end' (seconds), optionally 'label' and "
                f"'file'; got {', '.join(columns) or 'no header'}"
            )
        table: SegmentTable = {}
        for number, row in enumerate(reader, start=2):
            row = {(key or "").strip(): (value or "").strip() for key, value in row.items()}
            where = f"{path}, line {number}"
            start, end = _seconds(row["start"], "start", where), _seconds(row["end"], "end", where)
            label = row.get("label") or None
            table.setdefault(row.get("file", ANY_RECORDING), []).append((start, end, label))
    return table


def read_segments(path: PathLike) -> SegmentTable:
    """``{recording name: [(start, end, label), ...]}`` from an RTTM (``.rttm``) or CSV (``.csv``) file.

    The name ``""`` holds rows that apply to every recording (CSV without a
    ``file`` column). Labels are None where the file gives none.

    Raises
    ------
    ValueError
        For another suffix, a malformed line or a file without segments (the
        message names the file and line).
    OSError
        If the file cannot be read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".rttm":
        table = _read_rttm(path)
    elif suffix == ".csv":
        table = _read_csv(path)
    else:
        raise ValueError(f"{path}: segments are read from .rttm or .csv files, not '{suffix or path.name}'")
    if not table:
        raise ValueError(f"{path}: no segment found")
    return table


@dataclass(frozen=True)
class RegionRequest:
    """What to embed in each recording: windows, or segments (optionally one row per label).

    Attributes
    ----------
    window, step : float, optional
        Window length and step in seconds (windows mode).
    segments : dict, optional
        A :func:`read_segments` table (segments mode).
    pool : bool
        With segments: one row per label, the normalised mean of its segments' rows.
    """

    window: Optional[float] = None
    step: Optional[float] = None
    segments: Optional[SegmentTable] = None
    pool: bool = False

    def segments_of(self, name: str) -> List[Segment]:
        """The segments of the recording stored as ``name`` (its RTTM file id: the name or its last part)."""
        table = self.segments or {}
        for key in (name, name.rsplit("/", 1)[-1], ANY_RECORDING):
            if key in table:
                return table[key]
        raise ValueError(f"the segments file has no segment for '{name}'")

    def embed(self, extractor: Any, name: str, audio: Any) -> Regions:
        """The rows of recording ``name``, with their times and labels."""
        if self.segments is None:
            rows, times = extractor.embed_windows(audio, self.window, self.step)
            return Regions(rows, times)
        segments = self.segments_of(name)
        rows = extractor.embed_segments(audio, [(start, end) for start, end, _ in segments])
        times = numpy.array([[start, end] for start, end, _ in segments], dtype=numpy.float64)
        labels = [label for _, _, label in segments]
        if all(label is None for label in labels):
            if self.pool:
                raise ValueError("the segments have no labels to pool by: give a label column or speaker")
            return Regions(rows, times)
        labels = ["" if label is None else label for label in labels]
        if not self.pool:
            return Regions(rows, times, labels)
        names, pooled, spans = windows.pool_by_label(rows, labels, times)
        return Regions(pooled, spans, names)
