"""Cosine scores of embeddings and their symmetric normalisation (S-norm, adaptive S-norm).

A cosine score means different things for different speakers and recording
conditions. Score normalisation measures, for each side of a trial, how that
side scores against a *cohort* of recordings of other speakers, and expresses
the trial's score in those units:

* Z-norm uses the enrolment side's cohort statistics, T-norm the probe side's
  (both in bob.bio.base, :class:`~bob.bio.base.pipelines.ZNormScores` and
  :class:`~bob.bio.base.pipelines.TNormScores`);
* **S-norm** averages the two::

      s_norm(s) = ((s - mean_e) / std_e + (s - mean_p) / std_p) / 2

  with the mean and population standard deviation (``ddof=0``, as bob.bio.base's
  Z- and T-norm) of the enrolment's and of the probe's scores against the cohort;
* **adaptive S-norm** (AS-norm) takes each side's statistics over its
  ``top_n`` highest cohort scores only: the cohort speakers closest to it.

:func:`s_norm` works on score arrays; :func:`cohort_statistics` computes the
statistics of embeddings against a cohort of embeddings in chunks of rows, so
that 10,000 probes against a cohort of 10,000 never hold the 10,000 x 10,000
score matrix (``make bench`` runs ``benchmarks/cohort.py``). :class:`SNormScores`
and :class:`PipelineScoreSNorm` plug the same arithmetic into bob.bio.base's
score-normalisation pipelines.

Exactness: the statistics are computed in float64 from float64 cosines; chunking
changes no number beyond the rounding of float64 matrix products (about 1e-15).
"""
import numbers
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = [
    "CohortStatistics",
    "cosine_scores",
    "l2_normalise",
    "cohort_statistics",
    "score_statistics",
    "s_norm",
    "SNormScores",
    "ASNormScores",
    "PipelineScoreSNorm",
    "template_matrix",
    "score_trials",
    "run_pipeline_s_norm",
    "DEFAULT_CHUNK_ROWS",
]

#: Rows of embeddings scored against the cohort at a time by :func:`cohort_statistics`.
DEFAULT_CHUNK_ROWS = 512


class CohortStatistics(NamedTuple):
    """Mean and population standard deviation of each row's cohort scores, shape ``(N,)`` each."""

    mean: numpy.ndarray
    std: numpy.ndarray


def l2_normalise(vectors: Any, what: str = "embeddings") -> numpy.ndarray:
    """Rows of ``vectors`` (``(N, D)``) scaled to unit length, in float64.

    Raises
    ------
    ValueError
        If ``vectors`` is not a 2-D array of finite real numbers or a row is all zeros.
    """
    array = _real_matrix(vectors, what)
    norms = numpy.linalg.norm(array, axis=1)
    zero = numpy.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"{what}: row {zero[0]} is all zeros and has no direction; drop it")
    return array / norms[:, numpy.newaxis]


def cosine_scores(enrolment: Any, probes: Any) -> numpy.ndarray:
    """Cosine similarity of every enrolment row with every probe row: ``(E, P)`` float64.

    >>> cosine_scores([[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [1.0, 1.0]]).round(4)
    array([[1.    , 0.7071],
           [0.    , 0.7071]])
    """
    enrolment = l2_normalise(enrolment, "enrolment embeddings")
    probes = l2_normalise(probes, "probe embeddings")
    _same_width(enrolment, probes, "enrolment", "probe")
    return enrolment @ probes.T


def score_statistics(scores: Any, top_n: Optional[int] = None, what: str = "cohort scores") -> CohortStatistics:
    """Mean and population standard deviation of each row of ``scores`` (``(N, C)``), or of its ``top_n`` highest.

    Parameters
    ----------
    scores : array_like
        One row of cohort scores per enrolment (or probe).
    top_n : int, optional
        Keep only each row's ``top_n`` highest scores (adaptive normalisation);
        all ``C`` by default. At least 2 and at most ``C``.
    what : str
        Name of ``scores`` in error messages.

    Raises
    ------
    ValueError
        If ``scores`` is not a 2-D array of finite numbers, ``top_n`` is out of
        range, or a row's scores are all equal (a standard deviation of 0).
    """
    scores = _real_matrix(scores, what)
    top_n = _top_n(top_n, scores.shape[1])
    kept = scores if top_n is None else _highest(scores, top_n)
    mean, std = kept.mean(axis=1), kept.std(axis=1)  # ddof=0, as bob.bio.base's Z- and T-norm
    flat = numpy.flatnonzero(std == 0)
    if flat.size:
        raise ValueError(
            f"{what}: row {flat[0]} has {'its top_n' if top_n else 'all its'} cohort scores equal (standard "
            "deviation 0), so its scores cannot be normalised; use a larger or more varied cohort"
        )
    return CohortStatistics(mean, std)


def cohort_statistics(
    embeddings: Any, cohort: Any, top_n: Optional[int] = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> CohortStatistics:
    """Statistics of the cosine scores of each embedding against every cohort embedding, in bounded memory.

    The scores are made ``chunk_rows`` embeddings at a time, so memory holds
    ``chunk_rows x C`` scores instead of ``N x C``; with ``top_n`` each row's
    highest scores are found with :func:`numpy.partition` (no full sort).

    Parameters
    ----------
    embeddings : array_like
        ``(N, D)`` enrolment or probe embeddings.
    cohort : array_like
        ``(C, D)`` cohort embeddings (recordings of speakers in neither side of the trials).
    top_n : int, optional
        As for :func:`score_statistics`.
    chunk_rows : int
        Embeddings scored at a time.

    Returns
    -------
    CohortStatistics
        ``(N,)`` means and standard deviations.

    >>> stats = cohort_statistics([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> float(stats.mean[0]), round(float(stats.std[0]), 4)
    (0.0, 0.8165)
    """
    from .embedding import whole_number

    chunk_rows = whole_number("chunk_rows", chunk_rows, minimum=1)
    embeddings = l2_normalise(embeddings, "embeddings")
    cohort = l2_normalise(cohort, "cohort embeddings")
    _same_width(embeddings, cohort, "embeddings", "cohort")
    top_n = _top_n(top_n, len(cohort))
    means, stds = numpy.empty(len(embeddings)), numpy.empty(len(embeddings))
    for start in range(0, len(embeddings), chunk_rows):
        stop = start + chunk_rows
        chunk = score_statistics(embeddings[start:stop] @ cohort.T, top_n, what=f"embeddings {start}-{stop - 1}")
        means[start:stop], stds[start:stop] = chunk
    return CohortStatistics(means, stds)


def s_norm(
    scores: Any, enrol_cohort_scores: Any, probe_cohort_scores: Any, top_n: Optional[int] = None
) -> numpy.ndarray:
    """S-norm (or, with ``top_n``, adaptive S-norm) of a score matrix.

    Parameters
    ----------
    scores : array_like
        ``(E, P)`` raw scores of E enrolments against P probes.
    enrol_cohort_scores : array_like
        ``(E, C)`` scores of each enrolment against the C cohort recordings.
    probe_cohort_scores : array_like
        ``(P, C)`` scores of each probe against the same cohort.
    top_n : int, optional
        Statistics over each side's ``top_n`` highest cohort scores (AS-norm);
        ``None`` (or ``C``) uses all of them (S-norm).

    Returns
    -------
    numpy.ndarray
        ``(E, P)`` float64: ``((s - mean_e) / std_e + (s - mean_p) / std_p) / 2``.

    Raises
    ------
    ValueError
        If a shape does not match, ``top_n`` is not an integer from 2 to C, or
        a side's cohort scores have no spread.

    >>> s_norm([[0.5]], [[0.0, 0.2]], [[0.1, 0.3]])
    array([[3.5]])
    """
    scores = _real_matrix(scores, "scores")
    enrol_side = _real_matrix(enrol_cohort_scores, "enrol_cohort_scores")
    probe_side = _real_matrix(probe_cohort_scores, "probe_cohort_scores")
    n_enrol, n_probe = scores.shape
    if enrol_side.shape[0] != n_enrol or probe_side.shape[0] != n_probe or enrol_side.shape[1] != probe_side.shape[1]:
        raise ValueError(
            f"shapes do not match: scores {scores.shape} is (E, P), so enrol_cohort_scores must be (E, C) and "
            f"probe_cohort_scores (P, C) with one cohort size C; got {enrol_side.shape} and {probe_side.shape}"
        )
    enrol = score_statistics(enrol_side, top_n, "enrol_cohort_scores")
    probe = score_statistics(probe_side, top_n, "probe_cohort_scores")
    return normalise(scores, enrol, probe)


def normalise(scores: numpy.ndarray, enrol: CohortStatistics, probe: CohortStatistics) -> numpy.ndarray:
    """The S-norm of ``(E, P)`` scores given each side's cohort statistics."""
    z_part = (scores - enrol.mean[:, numpy.newaxis]) / enrol.std[:, numpy.newaxis]
    t_part = (scores - probe.mean[numpy.newaxis, :]) / probe.std[numpy.newaxis, :]
    return (z_part + t_part) / 2


def _real_matrix(values: Any, what: str) -> numpy.ndarray:
    try:
        array = numpy.asarray(values, dtype=numpy.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a 2-D array of real numbers, got {type(values).__name__}") from None
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array, got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"{what} has no columns (shape {array.shape})")
    if not numpy.all(numpy.isfinite(array)):
        raise ValueError(f"{what} holds NaN or infinite values; drop or fix those rows")
    return array


def _same_width(first: numpy.ndarray, second: numpy.ndarray, first_name: str, second_name: str) -> None:
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"{first_name} have {first.shape[1]} dimensions but {second_name} {second.shape[1]}: they come from "
            "different networks"
        )


def _top_n(top_n: Optional[int], cohort_size: int) -> Optional[int]:
    """``top_n`` checked against the cohort size (``None``: the whole cohort)."""
    if top_n is None:
        return None
    if isinstance(top_n, (bool, numpy.bool_)) or not isinstance(top_n, numbers.Integral) or not 2 <= top_n <= cohort_size:
        raise ValueError(
            f"top_n must be an integer from 2 (a standard deviation needs two scores) to the cohort size "
            f"{cohort_size}, got {top_n!r}"
        )
    return int(top_n)


def _highest(scores: numpy.ndarray, top_n: int) -> numpy.ndarray:
    """Each row's ``top_n`` highest values, in no particular order."""
    return numpy.partition(scores, scores.shape[1] - top_n, axis=1)[:, scores.shape[1] - top_n :]


# -- bob.bio.base score post-processors ---------------------------------------------------------


class SNormScores(TransformerMixin, BaseEstimator):
    """S-norm as a bob.bio.base score post-processor, beside its ``ZNormScores`` and ``TNormScores``.

    Like them it is fitted on the scores of the cohort (lists of
    :class:`~bob.pipelines.SampleSet` of score :class:`~bob.pipelines.Sample`,
    as ``PipelineSimple.compute_scores`` returns them) and transforms the raw
    scores the same way. S-norm needs both sides' cohort scores, so
    :meth:`fit` takes two score lists, and :class:`PipelineScoreSNorm` (in
    place of bob's ``PipelineScoreNorm``, which scores the cohort on one side
    only) computes them.

    Parameters
    ----------
    top_n : int, optional
        Adaptive S-norm over each side's ``top_n`` highest cohort scores; all by default.

    Attributes
    ----------
    enrol_stats_ : dict
        ``{enrolment template_id: (mean, std)}``.
    probe_stats_ : dict
        ``{probe template_id: (mean, std)}``.
    """

    #: Read by :class:`PipelineScoreSNorm`: the cohort is scored on both sides.
    post_process_template = "both"

    def __init__(self, top_n: Optional[int] = None):
        self.top_n = top_n

    def fit(self, enrol_cohort_scores: Sequence[Any], probe_cohort_scores: Sequence[Any]) -> "SNormScores":
        """Cohort statistics of each enrolment and each probe.

        Parameters
        ----------
        enrol_cohort_scores : list of SampleSet
            The cohort scored as probes against the enrolment templates: one
            set per cohort recording, one score per enrolment template (each
            score sample carries the enrolment's ``template_id``), as bob's
            Z-norm is fitted.
        probe_cohort_scores : list of SampleSet
            The probes scored against the cohort enrolled as templates: one
            set per probe (carrying the probe's ``template_id``), as bob's
            T-norm is fitted.
        """
        by_enrolment: Dict[Any, List[float]] = {}
        for cohort_set in enrol_cohort_scores:
            for score in cohort_set:
                by_enrolment.setdefault(score.template_id, []).append(score.data)
        by_probe = {probe_set.template_id: [score.data for score in probe_set] for probe_set in probe_cohort_scores}
        self.enrol_stats_ = self._statistics(by_enrolment, "enrolment")
        self.probe_stats_ = self._statistics(by_probe, "probe")
        return self

    def _statistics(self, scores_by_id: Dict[Any, List[float]], side: str) -> Dict[Any, Tuple[float, float]]:
        if not scores_by_id:
            raise ValueError(f"no cohort scores for any {side}: the cohort list is empty")
        sizes = {len(scores) for scores in scores_by_id.values()}
        if len(sizes) != 1:
            raise ValueError(f"the {side}s were scored against cohorts of different sizes {sorted(sizes)}")
        ids = list(scores_by_id)
        stats = score_statistics([scores_by_id[key] for key in ids], self.top_n, f"cohort scores of the {side}s")
        return {key: (float(mean), float(std)) for key, mean, std in zip(ids, stats.mean, stats.std)}

    def transform(self, scores: Sequence[Any]) -> List[Any]:
        """The raw scores (one :class:`~bob.pipelines.SampleSet` per probe) S-normalised, metadata kept."""
        Sample, SampleSet = _bob_samples()
        normalised = []
        for probe_set in scores:
            probe_mean, probe_std = self._stats(self.probe_stats_, probe_set.template_id, "probe")
            samples = []
            for score in probe_set:
                enrol_mean, enrol_std = self._stats(self.enrol_stats_, score.template_id, "enrolment")
                value = ((score.data - enrol_mean) / enrol_std + (score.data - probe_mean) / probe_std) / 2
                samples.append(Sample(value, parent=score))
            normalised.append(SampleSet(samples, parent=probe_set))
        return normalised

    @staticmethod
    def _stats(table: Dict[Any, Tuple[float, float]], key: Any, side: str) -> Tuple[float, float]:
        try:
            return table[key]
        except KeyError:
            raise ValueError(f"no cohort statistics for {side} {key!r}: fit on the cohort scores of these {side}s") from None

    def _more_tags(self) -> dict:
        return {"requires_fit": True}


class ASNormScores(SNormScores):
    """Adaptive S-norm post-processor: :class:`SNormScores` over each side's ``top_n`` highest cohort scores."""

    def __init__(self, top_n: int = 200):
        super().__init__(top_n=top_n)


class PipelineScoreSNorm:
    """bob.bio.base's ``PipelineSimple`` followed by S-norm (or AS-norm) of its scores.

    Called like bob's ``PipelineScoreNorm``, with the cohort's sample sets as
    ``post_process_samples`` (the ``for_tnorm.csv`` list of a CSV database,
    ``database.treferences()``). The cohort is enrolled as templates and
    scored against the probes, and also scored as probes against the
    enrolments; the post-processor is fitted on both and transforms the raw
    scores.

    Parameters
    ----------
    pipeline_simple : bob.bio.base.pipelines.PipelineSimple
        Transformer and biometric algorithm making the raw scores.
    post_processor : SNormScores
        The normaliser (:class:`SNormScores` or :class:`ASNormScores`).
    """

    def __init__(self, pipeline_simple: Any, post_processor: SNormScores):
        self.pipeline_simple = pipeline_simple
        self.post_processor = post_processor

    def __call__(
        self,
        background_model_samples: Sequence[Any],
        biometric_reference_samples: Sequence[Any],
        probe_samples: Sequence[Any],
        post_process_samples: Sequence[Any],
        score_all_vs_all: bool = False,
    ) -> Tuple[List[Any], List[Any]]:
        """``(raw_scores, normalised_scores)``, each one SampleSet per probe."""
        simple = self.pipeline_simple
        raw_scores, enrol_templates, probe_templates = simple(
            background_model_samples=background_model_samples,
            biometric_reference_samples=biometric_reference_samples,
            probe_samples=probe_samples,
            score_all_vs_all=score_all_vs_all,
            return_templates=True,
        )
        cohort_as_enrolment = simple.enroll_templates(post_process_samples)
        cohort_as_probes = simple.probe_templates(_scored_against_all(post_process_samples, enrol_templates))
        enrol_side = simple.compute_scores(cohort_as_probes, enrol_templates, score_all_vs_all=True)
        probe_side = simple.compute_scores(probe_templates, cohort_as_enrolment, score_all_vs_all=True)
        self.post_processor.fit(enrol_side, probe_side)
        return raw_scores, self.post_processor.transform(raw_scores)

    def write_scores(self, scores: Any) -> Any:
        """As ``PipelineSimple.write_scores``."""
        return self.pipeline_simple.write_scores(scores)

    def post_process(self, score_paths: Any, filename: str) -> Any:
        """As ``PipelineSimple.post_process``."""
        return self.pipeline_simple.post_process(score_paths, filename)


def _scored_against_all(sample_sets: Iterable[Any], enrol_templates: Sequence[Any]) -> List[Any]:
    """The cohort's sample sets, each referring to every enrolment (as bob's ``zprobes`` are)."""
    _, SampleSet = _bob_samples()
    references = [template.template_id for template in enrol_templates]
    copies = []
    for sample_set in sample_sets:
        copy = SampleSet(list(sample_set), parent=sample_set)
        copy.references = references
        copies.append(copy)
    return copies


def _bob_samples() -> tuple:
    """bob.pipelines' ``Sample`` and ``SampleSet``, imported on first use (the array functions need no bob)."""
    from .bob_imports import sigint_handler_kept

    with sigint_handler_kept():
        from bob.pipelines import Sample, SampleSet
    return Sample, SampleSet


# -- trials of named embeddings -------------------------------------------------------------------


def template_matrix(rows_by_key: Mapping[str, numpy.ndarray], keys: Sequence[str]) -> numpy.ndarray:
    """One unit vector per key (``(len(keys), D)``), averaging each key's rows.

    A key with several rows (the chunks of a recording) is represented by the
    mean of its L2-normalised rows, renormalised to unit length.
    """
    from .score_files import template_embedding

    return numpy.vstack([template_embedding(rows_by_key[key]) for key in keys])


def score_trials(
    rows_by_key: Mapping[str, numpy.ndarray],
    trials: Sequence[Any],
    cohort: Optional[Any] = None,
    top_n: Optional[int] = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> numpy.ndarray:
    """Cosine score of each trial, S-normalised against ``cohort`` if given.

    Parameters
    ----------
    rows_by_key : mapping
        ``{key: (n, D) rows}``, e.g. :attr:`~bob.learn.pytorch.score_files.EmbeddingTable.rows`.
    trials : sequence of Trial
        ``enrolment`` and ``probe`` keys of each comparison.
    cohort : array_like, optional
        ``(C, D)`` cohort embeddings (one per cohort recording); none: raw cosines.
    top_n : int, optional
        AS-norm over each side's ``top_n`` highest cohort scores.
    chunk_rows : int
        As for :func:`cohort_statistics`.

    Returns
    -------
    numpy.ndarray
        One float64 score per trial.

    Raises
    ------
    KeyError
        Naming up to three keys the trials use and the embeddings lack (checked first).
    """
    missing = sorted({key for trial in trials for key in (trial.enrolment, trial.probe)} - set(rows_by_key))
    if missing:
        raise KeyError(f"{len(missing)} keys of the trials have no embedding, e.g. {', '.join(missing[:3])}")
    if top_n is not None and cohort is None:
        raise ValueError("top_n needs a cohort")
    enrolment_keys = list(dict.fromkeys(trial.enrolment for trial in trials))
    probe_keys = list(dict.fromkeys(trial.probe for trial in trials))
    enrolments, probes = template_matrix(rows_by_key, enrolment_keys), template_matrix(rows_by_key, probe_keys)
    _same_width(enrolments, probes, "enrolment embeddings", "probe")
    row_of = {key: index for index, key in enumerate(enrolment_keys)}
    column_of = {key: index for index, key in enumerate(probe_keys)}
    e_index = numpy.array([row_of[trial.enrolment] for trial in trials])
    p_index = numpy.array([column_of[trial.probe] for trial in trials])
    raw = numpy.einsum("ij,ij->i", enrolments[e_index], probes[p_index])
    if cohort is None:
        return raw
    enrol = cohort_statistics(enrolments, cohort, top_n, chunk_rows)
    probe = cohort_statistics(probes, cohort, top_n, chunk_rows)
    return ((raw - enrol.mean[e_index]) / enrol.std[e_index] + (raw - probe.mean[p_index]) / probe.std[p_index]) / 2


def run_pipeline_s_norm(
    pipeline_simple: Any,
    database: Any,
    output: Union[str, "os.PathLike[str]"],
    group: str = "dev",
    top_n: Optional[int] = None,
) -> Tuple[Path, Path]:
    """Run ``pipeline_simple`` on a database with a cohort and write raw and S-normalised CSV scores.

    What ``bob bio pipeline score-norm`` does for Z- and T-norm, for S-norm
    (or AS-norm with ``top_n``): the cohort is ``database.treferences()``
    (``train/for_tnorm.csv``, which
    :func:`~bob.learn.pytorch.database.recordings_database` writes with
    ``cohort_speakers``), and the scores go where that command puts its own:
    ``<output>/scores-<group>/raw_scores.csv`` and ``s-norm.csv`` (or
    ``as-norm.csv``), in bob's CSV score format (``bob bio metrics`` reads them).
    No dask and no checkpoints.

    Returns
    -------
    tuple of pathlib.Path
        The raw and the normalised score files.

    Raises
    ------
    ValueError
        If the database lists no cohort, enrolment or probe for ``group``.
    """
    from .bob_imports import sigint_handler_kept

    with sigint_handler_kept():
        from bob.bio.base.pipelines import CSVScoreWriter

    cohort = database.treferences()
    if not cohort:
        raise ValueError("the database lists no cohort (train/for_tnorm.csv): pass cohort_speakers= to "
                         "recordings_database, or write the file")
    references, probes = database.references(group=group), database.probes(group=group)
    if not references or not probes:
        raise ValueError(f"the database has no enrolment or no probe in group {group!r}")
    folder = Path(output) / f"scores-{group}"
    folder.mkdir(parents=True, exist_ok=True)
    pipeline_simple.score_writer = CSVScoreWriter(os.fspath(Path(output) / "tmp"))
    pipeline = PipelineScoreSNorm(pipeline_simple, SNormScores(top_n))
    raw, normalised = pipeline(database.background_model_samples(), references, probes, cohort,
                               score_all_vs_all=getattr(database, "score_all_vs_all", False))
    written = (folder / "raw_scores.csv", folder / ("as-norm.csv" if top_n else "s-norm.csv"))
    for scores, path in zip((raw, normalised), written):
        pipeline.post_process(pipeline.write_scores(scores), os.fspath(path))
    return written
