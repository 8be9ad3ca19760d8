"""Calibration: scores to log-likelihood ratios by prior-weighted linear logistic regression.

A calibrated score is a natural-log likelihood ratio,
``llr = slope * score + offset``: how much more probable the score is if the
two recordings are of one speaker than if they are of two. The two numbers
are fitted on labelled trials by logistic regression (scikit-learn's
:class:`~sklearn.linear_model.LogisticRegression`, unpenalised), the field's
standard since the BOSARIS toolkit, with the target trials weighted by
``prior / n_targets`` and the non-target trials by ``(1 - prior) / n_nontargets``:
the fit then minimises the Cllr-style cross-entropy at the ``prior``
whatever the proportion of target trials in the training list, and its
log posterior odds less ``logit(prior)`` are the LLR.

A calibration holds only for scores made the same way: the same network
and model file, the same normalisation and cohort size. A
:class:`Calibration` records that :class:`~bob.learn.pytorch.score_files.ScoreProvenance`
and :meth:`Calibration.check` refuses scores of another.
"""
import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, Union

import numpy

from .atomic import replacing
from .score_files import NORMS, ScoreProvenance

__all__ = ["Calibration", "CalibrationMismatch", "fit_calibration", "load_calibration", "FORMAT"]

PathLike = Union[str, "os.PathLike[str]"]

#: ``format`` field of calibration files.
FORMAT = "bob.learn.pytorch calibration 1"


class CalibrationMismatch(ValueError):
    """Scores made differently from those a calibration was fitted on."""


@dataclass(frozen=True)
class Calibration:
    """A fitted score-to-LLR map and the scores it is valid for.

    Attributes
    ----------
    slope, offset : float
        ``llr = slope * score + offset`` (natural logarithm).
    prior : float
        Target prior the fit was weighted for.
    n_targets, n_nontargets : int
        Trials it was fitted on.
    provenance : ScoreProvenance
        How the scores were made.
    """

    slope: float
    offset: float
    prior: float
    n_targets: int
    n_nontargets: int
    provenance: ScoreProvenance

    def llr(self, scores: Any) -> numpy.ndarray:
        """Log-likelihood ratios of ``scores``, float64."""
        return self.slope * numpy.asarray(scores, dtype=numpy.float64) + self.offset

    def check(self, provenance: ScoreProvenance) -> None:
        """Refuse scores made otherwise than those the calibration was fitted on.

        Raises
        ------
        CalibrationMismatch
            Naming each difference: network, model file, normalisation, cohort size or ``top_n``.
        """
        mine, theirs = self.provenance, provenance
        problems = []
        if mine.network != theirs.network:
            problems.append(f"network {_shown(theirs.network)} instead of {_shown(mine.network)}")
        if mine.model_sha256 and theirs.model_sha256 != mine.model_sha256:
            problems.append(
                f"model file sha256 {_shown(theirs.model_sha256)[:16]}... instead of {mine.model_sha256[:16]}..."
            )
        for name, label in (("norm", "normalisation"), ("cohort_size", "cohort size"), ("top_n", "top_n")):
            if getattr(mine, name) != getattr(theirs, name):
                problems.append(f"{label} {_shown(getattr(theirs, name))} instead of {_shown(getattr(mine, name))}")
        if problems:
            raise CalibrationMismatch(
                "the calibration was fitted on scores made otherwise; these scores have "
                + "; ".join(problems)
                + ": fit a calibration on scores made like these (bob pytorch calibrate)"
            )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "llr": "slope * score + offset (natural logarithm)",
            "slope": self.slope,
            "offset": self.offset,
            "prior": self.prior,
            "n_targets": self.n_targets,
            "n_nontargets": self.n_nontargets,
            "scores": self.provenance.as_dict(),
        }

    def save(self, path: PathLike) -> None:
        """Write the calibration as JSON, atomically (see :func:`~bob.learn.pytorch.atomic.replacing`)."""
        with replacing(path, what="the calibration") as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _shown(value: Any) -> str:
    return "unknown" if value is None else str(value)


def fit_calibration(scores: Any, targets: Any, provenance: ScoreProvenance, prior: float = 0.5) -> Calibration:
    """Fit ``llr = slope * score + offset`` on labelled scores.

    Parameters
    ----------
    scores : array_like
        1-D scores.
    targets : array_like
        1-D booleans: True for target (same-speaker) trials.
    provenance : ScoreProvenance
        How the scores were made (recorded in the calibration).
    prior : float
        Target prior of the weighting, strictly between 0 and 1.

    Raises
    ------
    ValueError
        If the arrays differ in length, hold non-finite scores, or lack either kind of trial.

    Non-target and target scores mirror each other about 1, where the LLR is 0:

    >>> scores = numpy.array([-1.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 3.0])
    >>> targets = numpy.array([False] * 4 + [True] * 4)
    >>> calibration = fit_calibration(scores, targets, ScoreProvenance())
    >>> abs(float(calibration.llr([1.0])[0])) < 1e-6
    True
    """
    from sklearn.linear_model import LogisticRegression

    scores = numpy.asarray(scores, dtype=numpy.float64)
    targets = numpy.asarray(targets, dtype=bool)
    _check(scores, targets, prior, provenance)
    n_targets, n_nontargets = int(targets.sum()), int((~targets).sum())
    weights = numpy.where(targets, prior / n_targets, (1 - prior) / n_nontargets) * len(scores)
    regression = LogisticRegression(penalty=None, tol=1e-10, max_iter=10_000)
    regression.fit(scores[:, numpy.newaxis], targets, sample_weight=weights)
    slope = float(regression.coef_[0, 0])
    offset = float(regression.intercept_[0]) - math.log(prior / (1 - prior))
    return Calibration(slope, offset, float(prior), n_targets, n_nontargets, provenance)


def _check(scores: numpy.ndarray, targets: numpy.ndarray, prior: float, provenance: ScoreProvenance) -> None:
    if scores.ndim != 1 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must be 1-D of one length, got shapes {scores.shape} and {targets.shape}")
    if not numpy.all(numpy.isfinite(scores)):
        raise ValueError("the scores hold NaN or infinite values")
    if targets.all() or not targets.any():
        kind = "non-target" if targets.all() else "target"
        raise ValueError(f"calibration needs target and non-target trials; the scores have no {kind} trial")
    if not 0 < prior < 1:
        raise ValueError(f"prior must be strictly between 0 and 1, got {prior!r}")
    if provenance.norm not in NORMS:
        raise ValueError(f"unknown normalisation {provenance.norm!r}; one of {', '.join(NORMS)}")


def load_calibration(path: PathLike) -> Calibration:
    """Read a calibration file written by :meth:`Calibration.save`.

    Raises
    ------
    ValueError
        If the file is not such a calibration.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a calibration file (not JSON: {error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a calibration file written by 'bob pytorch calibrate'")
    names = {field.name for field in fields(ScoreProvenance)}
    try:
        provenance = ScoreProvenance(**{key: value for key, value in data["scores"].items() if key in names})
        return Calibration(float(data["slope"]), float(data["offset"]), float(data["prior"]),
                           int(data["n_targets"]), int(data["n_nontargets"]), provenance)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path} is a damaged calibration file ({type(error).__name__}: {error})") from None
