"""Calibration: recovery of a known score-to-LLR map, Cllr against bob.measure, refusals, files.

Scores are drawn from a known model: target scores N(mu_t, sigma), non-target
scores N(mu_n, sigma). Its log-likelihood ratio is linear in the score,

    llr(s) = (mu_t - mu_n) / sigma**2 * s - (mu_t**2 - mu_n**2) / (2 sigma**2),

so a correct fit recovers that slope and offset (up to sampling error).
"""
import json
import math

import bob.measure
import numpy
import pytest

from bob.learn.pytorch.calibration import Calibration, CalibrationMismatch, fit_calibration, load_calibration
from bob.learn.pytorch.score_files import ScoreProvenance

MU_T, MU_N, SIGMA = 0.6, 0.1, 0.2
SLOPE = (MU_T - MU_N) / SIGMA**2  # 12.5
OFFSET = -(MU_T**2 - MU_N**2) / (2 * SIGMA**2)  # -4.375
PROVENANCE = ScoreProvenance("dltresnet34", "ab" * 32, "as-norm", 400, 100)


def gaussian_scores(seed: int, n_targets: int, n_nontargets: int):
    rng = numpy.random.default_rng(seed)
    targets = rng.normal(MU_T, SIGMA, n_targets)
    nontargets = rng.normal(MU_N, SIGMA, n_nontargets)
    return numpy.concatenate([targets, nontargets]), numpy.arange(n_targets + n_nontargets) < n_targets


@pytest.mark.parametrize("n_targets, n_nontargets, prior", [(50_000, 50_000, 0.5), (10_000, 100_000, 0.5),
                                                            (50_000, 50_000, 0.05)])
def test_fit_recovers_the_known_slope_and_offset(n_targets, n_nontargets, prior):
    """Whatever the share of targets and the prior weighting, the LLR of the model is found.

    Sampling error of the fit with these counts is below 1.5 % of the slope
    and 0.06 of the offset; the tolerances are about three times that.
    An unweighted fit of the 1:10 list would be off by log(10) = 2.3 in the offset.
    """
    scores, targets = gaussian_scores(28, n_targets, n_nontargets)
    calibration = fit_calibration(scores, targets, PROVENANCE, prior=prior)
    assert calibration.slope == pytest.approx(SLOPE, rel=0.05)
    assert calibration.offset == pytest.approx(OFFSET, abs=0.2)
    assert (calibration.n_targets, calibration.n_nontargets, calibration.prior) == (n_targets, n_nontargets, prior)
    numpy.testing.assert_allclose(calibration.llr([0.0, 1.0]), [calibration.offset, calibration.offset + calibration.slope])


def min_cllr(scores, targets) -> float:
    """Minimum Cllr as bob.measure.calibration.min_cllr defines it (BOSARIS): Cllr of the PAV-calibrated scores.

    bob.measure 6.1.1's own ``min_cllr`` cannot run on NumPy >= 1.24 (it uses
    the removed ``numpy.float``), so its recipe is followed here: isotonic
    (PAV) posteriors, turned into LLRs by removing the trials' prior odds,
    then bob.measure's ``cllr``.
    """
    from sklearn.isotonic import IsotonicRegression

    posterior = IsotonicRegression(out_of_bounds="clip").fit_transform(scores, targets.astype(float))
    prior_odds = math.log(targets.mean() / (1 - targets.mean()))
    with numpy.errstate(divide="ignore"):
        llr = numpy.log(posterior) - numpy.log1p(-posterior) - prior_odds
    return bob.measure.calibration.cllr(llr[~targets], llr[targets])


def test_cllr_after_calibration_is_close_to_the_minimum():
    """bob.measure's Cllr of the calibrated scores is within 0.01 bit of the minimum Cllr (and far below the raw Cllr)."""
    scores, targets = gaussian_scores(7, 3000, 3000)
    calibration = fit_calibration(scores, targets, PROVENANCE)
    llr = calibration.llr(scores)
    calibrated = bob.measure.calibration.cllr(llr[~targets], llr[targets])
    minimum = min_cllr(scores, targets)
    raw = bob.measure.calibration.cllr(scores[~targets], scores[targets])
    assert minimum <= calibrated <= minimum + 0.01
    assert raw > calibrated + 0.3


def test_calibration_file_round_trip(tmp_path):
    scores, targets = gaussian_scores(1, 500, 500)
    calibration = fit_calibration(scores, targets, PROVENANCE)
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "calibration.json"
    calibration.save(path)
    data = json.loads(path.read_text())
    assert data["scores"] == {"network": "dltresnet34", "model_sha256": "ab" * 32, "norm": "as-norm",
                              "cohort_size": 400, "top_n": 100}
    assert load_calibration(path) == calibration
    assert [p.name for p in path.parent.iterdir()] == ["calibration.json"], "no temporary file is left"


@pytest.mark.parametrize(
    "other, message",
    [
        (ScoreProvenance("resnet34", "ab" * 32, "as-norm", 400, 100), "network resnet34 instead of dltresnet34"),
        (ScoreProvenance("dltresnet34", "cd" * 32, "as-norm", 400, 100),
         r"model file sha256 cdcdcdcdcdcdcdcd\.\.\. instead of abababababababab\.\.\."),
        (ScoreProvenance("dltresnet34", "ab" * 32, "s-norm", 400, None),
         "normalisation s-norm instead of as-norm; top_n unknown instead of 100"),
        (ScoreProvenance("dltresnet34", "ab" * 32, "as-norm", 300, 100), "cohort size 300 instead of 400"),
        (ScoreProvenance(None, None, "none"), "network unknown instead of dltresnet34"),
    ],
)
def test_scores_made_otherwise_are_refused(other, message):
    calibration = Calibration(SLOPE, OFFSET, 0.5, 10, 10, PROVENANCE)
    with pytest.raises(CalibrationMismatch, match=r"^the calibration was fitted on scores made otherwise; these scores "
                       r"have .*" + message + r".*: fit a calibration on scores made like these \(bob pytorch calibrate\)$"):
        calibration.check(other)
    calibration.check(PROVENANCE)  # the same provenance passes


@pytest.mark.parametrize(
    "scores, targets, prior, message",
    [
        ([0.1, 0.2], [True, True], 0.5, "calibration needs target and non-target trials; the scores have no non-target trial"),
        ([0.1, 0.2], [False, False], 0.5, "the scores have no target trial"),
        ([0.1, math.nan], [True, False], 0.5, "the scores hold NaN or infinite values"),
        ([0.1, 0.2], [True, False], 1.0, "prior must be strictly between 0 and 1, got 1.0"),
        ([0.1, 0.2, 0.3], [True, False], 0.5, r"scores and targets must be 1-D of one length, got shapes \(3,\) and \(2,\)"),
    ],
)
def test_bad_training_scores_are_refused(scores, targets, prior, message):
    with pytest.raises(ValueError, match=message):
        fit_calibration(scores, targets, PROVENANCE, prior=prior)


def test_a_file_that_is_not_a_calibration_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"slope": 1}')
    with pytest.raises(ValueError, match="is not a calibration file written by 'bob pytorch calibrate'"):
        load_calibration(path)
