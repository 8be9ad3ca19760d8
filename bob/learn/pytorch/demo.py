"""The demo behind ``bob pytorch demo`` and ``make demo``.

Embeds the recordings shipped in ``bob/learn/pytorch/data/speech`` (their
speakers are listed in ``speakers.csv``), computes the cosine similarity of
every pair and returns a printable report; the embeddings and the matrix are
written to an output folder.
"""
import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy

from .atomic import replacing
from .inputs import AudioInput, Failure, embed_inputs
from .outputs import write_output
from .preprocessor.audio import EmbeddingExtractor

__all__ = ["SPEECH_DIR", "Recording", "bundled_recordings", "cosine_similarity", "format_report", "run_demo"]

#: Folder of the recordings shipped with the package.
SPEECH_DIR = Path(__file__).resolve().parent / "data" / "speech"


@dataclass(frozen=True)
class Recording:
    """A bundled recording and its speaker label."""

    path: Path
    speaker: str

    @property
    def name(self) -> str:
        """File name without ``.wav``."""
        return self.path.stem


def bundled_recordings(folder: Path = SPEECH_DIR) -> List[Recording]:
    """The recordings listed in ``speakers.csv`` (columns ``file`` and ``speaker``), in its order.

    Raises
    ------
    FileNotFoundError
        If ``speakers.csv`` or a file it lists is missing.
    """
    table = folder / "speakers.csv"
    if not table.is_file():
        raise FileNotFoundError(f"the demo recordings are missing: no {table}")
    with open(table, newline="", encoding="utf-8") as handle:
        recordings = [Recording(folder / row["file"], row["speaker"]) for row in csv.DictReader(handle)]
    missing = [str(recording.path) for recording in recordings if not recording.path.is_file()]
    if missing:
        raise FileNotFoundError(f"demo recordings listed in {table} are missing: {', '.join(missing)}")
    return recordings


def cosine_similarity(embeddings: numpy.ndarray) -> numpy.ndarray:
    """Cosine similarity of every pair of rows, as float64.

    >>> cosine_similarity(numpy.array([[3.0, 4.0], [4.0, 3.0], [-3.0, -4.0]])).round(2)
    array([[ 1.  ,  0.96, -1.  ],
           [ 0.96,  1.  , -0.96],
           [-1.  , -0.96,  1.  ]])
    """
    rows = numpy.asarray(embeddings, dtype=numpy.float64)
    unit = rows / numpy.linalg.norm(rows, axis=1, keepdims=True)
    return unit @ unit.T


def _nearest_other(similarity: numpy.ndarray) -> numpy.ndarray:
    masked = similarity.copy()
    numpy.fill_diagonal(masked, -numpy.inf)
    return masked.argmax(axis=1)


def format_report(recordings: Sequence[Recording], similarity: numpy.ndarray, title: str) -> str:
    """The similarity matrix with speaker labels and a short summary, as text."""
    count = len(recordings)
    label_width = max(len(recording.speaker) for recording in recordings)
    lines = [title, "", "recordings:"]
    for index, recording in enumerate(recordings, 1):
        lines.append(f"  {index:>2}  {recording.name:<16} {recording.speaker}")
    lines += ["", "cosine similarity:", " " * (label_width + 5) + "".join(f"{index:>6}" for index in range(1, count + 1))]
    for index, recording in enumerate(recordings):
        values = "".join(f"{value:>6.2f}" for value in similarity[index])
        lines.append(f"  {index + 1:>2} {recording.speaker:<{label_width}}{values}")
    speakers = numpy.array([recording.speaker for recording in recordings])
    same = speakers[:, None] == speakers[None, :]
    off_diagonal = ~numpy.eye(count, dtype=bool)
    nearest = _nearest_other(similarity)
    hits = int((speakers[nearest] == speakers).sum())
    lines += [
        "",
        f"mean similarity, same speaker:       {similarity[same & off_diagonal].mean():.3f}",
        f"mean similarity, different speakers: {similarity[~same].mean():.3f}",
        f"most similar other recording has the same speaker for {hits} of {count} recordings",
    ]
    return "\n".join(lines)


def _write_similarity_csv(recordings: Sequence[Recording], similarity: numpy.ndarray, path: Path) -> None:
    with replacing(path, what="the similarity matrix") as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["file", "speaker"] + [recording.name for recording in recordings])
            for recording, row in zip(recordings, similarity):
                writer.writerow([recording.name, recording.speaker] + [f"{value:.6f}" for value in row])


def run_demo(extractor: EmbeddingExtractor, output_dir: "os.PathLike[str] | str") -> str:
    """Embed the bundled recordings, write ``embeddings.h5`` and ``similarity.csv``, return the report.

    Parameters
    ----------
    extractor : EmbeddingExtractor
        The extractor to use (its model is loaded on first use).
    output_dir : path
        Created if needed.

    Raises
    ------
    ValueError
        If a bundled recording cannot be embedded.
    """
    recordings = bundled_recordings()
    items = [AudioInput(recording.name, recording.path) for recording in recordings]
    results = list(embed_inputs(extractor, items, batch_size=len(items)))
    failed = [result for result in results if isinstance(result, Failure)]
    if failed:
        raise ValueError(f"cannot embed {failed[0].source}: {failed[0].reason}")
    embeddings = numpy.vstack([result.rows for result in results])
    similarity = cosine_similarity(embeddings)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    attributes = {"model": extractor.pretrained.title, "model_file": os.path.abspath(extractor.model_path), "chunk_length": 0}
    write_output(results, folder / "embeddings.h5", attributes)
    _write_similarity_csv(recordings, similarity, folder / "similarity.csv")
    title = f"{extractor.pretrained.title} embeddings of {len(recordings)} recordings (model file {extractor.model_path})"
    footer = f"\nwrote {folder / 'embeddings.h5'} and {folder / 'similarity.csv'}"
    return format_report(recordings, similarity, title) + "\n" + footer
