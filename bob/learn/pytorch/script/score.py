"""``bob pytorch score`` and ``bob pytorch calibrate``: from embeddings to scores, and from scores to LLRs.

The commands parse options, call :mod:`bob.learn.pytorch.scoring`,
:mod:`bob.learn.pytorch.score_files` and :mod:`bob.learn.pytorch.calibration`,
and report; they are added to the ``bob pytorch`` group in
:mod:`bob.learn.pytorch.script.pytorch`.
"""
import logging
import os
from typing import List, Optional

import click
from clapper.click import verbosity_option

from .. import atomic, pretrained, score_files
from ..score_files import NORMS, ScoreProvenance

logger = logging.getLogger("bob.learn.pytorch")


def _one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split()) or type(error).__name__


def _check_output(output: str) -> None:
    reason = atomic.not_regular_file_reason(output)
    if reason:
        raise click.ClickException(f"cannot write {output}: it is {reason}")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise click.ClickException(f"cannot write {output}: no folder {folder}")


def check_norm_options(norm: str, cohort: Optional[str], top_n: Optional[int]) -> None:
    """Refuse option combinations that cannot be meant (usage errors, exit status 2)."""
    if norm == "none" and (cohort or top_n is not None):
        raise click.UsageError("--cohort and --top-n need --norm s-norm or --norm as-norm")
    if norm != "none" and not cohort:
        raise click.UsageError(f"--norm {norm} needs --cohort FILE (embeddings of recordings of other speakers)")
    if norm == "as-norm" and top_n is None:
        raise click.UsageError("--norm as-norm needs --top-n N (the cohort scores kept per side)")
    if norm == "s-norm" and top_n is not None:
        raise click.UsageError("--top-n is for --norm as-norm; s-norm uses the whole cohort")


def read_embeddings_or_fail(path: str, what: str) -> score_files.EmbeddingTable:
    try:
        return score_files.read_embeddings(path)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot read the {what} {path}: {_one_line(error)}") from None


def scores_provenance(
    table: score_files.EmbeddingTable,
    network: Optional[pretrained.PretrainedNetwork],
    model_file: Optional[str],
    norm: str,
    cohort: Optional[score_files.EmbeddingTable],
    top_n: Optional[int],
) -> ScoreProvenance:
    """How the scores are made: network and model file from the options, else from the embeddings file."""
    name = network.name if network is not None else table.attributes.get("network")
    model = model_file or table.attributes.get("model_file")
    digest = None
    if model and os.path.isfile(str(model)):
        digest = score_files.file_sha256(str(model))
    elif model:
        logger.warning("model file %s (named by the embeddings) is not here: its digest is not recorded", model)
    if cohort is not None:
        cohort_network = cohort.attributes.get("network")
        if name and cohort_network and cohort_network != name:
            raise click.ClickException(f"the cohort was embedded by {cohort_network}, the trials by {name}")
        if cohort.width != table.width:
            raise click.ClickException(
                f"the cohort has {cohort.width}-dimensional embeddings, the trials {table.width}: different networks"
            )
    return ScoreProvenance(
        network=str(name) if name else None,
        model_sha256=digest,
        norm=norm,
        cohort_size=len(cohort.rows) if cohort is not None else None,
        top_n=top_n,
    )


@click.command("score")
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.option("--trials", "-t", type=click.Path(exists=True, dir_okay=False),
              help="Trial list: 'enrolment-key probe-key [target|nontarget]' per line. Default: all against all.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="CSV score file to write.")
@click.option("--norm", type=click.Choice(NORMS), default="none", show_default=True, help="Score normalisation.")
@click.option("--cohort", type=click.Path(dir_okay=False),
              help="Embeddings of the normalisation cohort (one per key, chunks averaged), as extract-audio writes.")
@click.option("--top-n", type=click.IntRange(min=2), help="AS-norm: highest cohort scores kept per side.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False),
              help="calibration.json of 'bob pytorch calibrate': write log-likelihood ratios instead of scores.")
@click.option("--network", type=click.Choice(pretrained.names()), help="Network that made the embeddings "
              "(default: the one the HDF5 file names; .npy and .csv files name none).")
@click.option("--model", "model_file", type=click.Path(exists=True, dir_okay=False),
              help="Model file that made the embeddings (default: the one the HDF5 file names), for its digest.")
@verbosity_option(logger=logger)
def score(
    embeddings: str,
    trials: Optional[str],
    output: str,
    norm: str,
    cohort: Optional[str],
    top_n: Optional[int],
    calibration: Optional[str],
    network: Optional[str],
    model_file: Optional[str],
    **_: object,
) -> None:
    """Score trials of embeddings written by 'bob pytorch extract-audio' into a CSV file 'bob bio metrics' reads.

    A key names a recording (its name in EMBEDDINGS); several rows of one key
    (chunks, -L) are averaged: the mean of the L2-normalised rows,
    renormalised. Scores are cosines, S-normalised or AS-normalised against
    the cohort with --norm. A target trial has equal probe_subject_id and
    bio_ref_subject_id: the trial list's label, else the keys' folders
    (alice/take1 is speaker alice), else the keys themselves.

    \b
    Example:
      bob pytorch score embeddings.h5 --trials trials.txt -o scores.csv
      bob pytorch score embeddings.h5 -t trials.txt --norm as-norm --cohort cohort.h5 --top-n 200 -o scores.csv
      bob bio metrics scores.csv
    """
    check_norm_options(norm, cohort, top_n)
    _check_output(output)
    from .. import calibration as calibration_module
    from .. import scoring

    fitted = None
    if calibration:
        try:
            fitted = calibration_module.load_calibration(calibration)
        except (OSError, ValueError) as error:
            raise click.ClickException(_one_line(error)) from None
    table = read_embeddings_or_fail(embeddings, "embeddings")
    cohort_table = read_embeddings_or_fail(cohort, "cohort embeddings") if cohort else None
    try:
        trial_list = score_files.read_trials(trials) if trials else score_files.all_pairs(list(table.rows))
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot read the trial list: {_one_line(error)}") from None
    record = pretrained.get(network) if network else None
    provenance = scores_provenance(table, record, model_file, norm, cohort_table, top_n)
    if fitted is not None:
        try:
            fitted.check(provenance)
        except calibration_module.CalibrationMismatch as error:
            raise click.ClickException(f"{calibration}: {_one_line(error)}") from None
    cohort_matrix = None
    if cohort_table is not None:
        cohort_matrix = scoring.template_matrix(cohort_table.rows, list(cohort_table.rows))
    try:
        values = scoring.score_trials(table.rows, trial_list, cohort_matrix, top_n)
    except (KeyError, ValueError) as error:
        raise click.ClickException(_one_line(error)) from None
    if fitted is not None:
        values = fitted.llr(values)
    try:
        score_files.write_scores(output, trial_list, values, provenance)
    except OSError as error:
        raise click.ClickException(f"cannot write {output}: {_one_line(error)}") from None
    what = "log-likelihood ratios" if fitted is not None else f"scores ({norm})"
    click.echo(f"wrote {len(trial_list)} {what} to {output}")


@click.command("calibrate")
@click.argument("scores", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Calibration file (JSON).")
@click.option("--prior", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True,
              help="Target prior the logistic regression is weighted for.")
@verbosity_option(logger=logger)
def calibrate(scores: str, output: str, prior: float, **_: object) -> None:
    """Fit scores to log-likelihood ratios on a labelled CSV score file.

    The labels are read as 'bob bio metrics' reads them (a target trial has
    equal probe_subject_id and bio_ref_subject_id). The fit is a linear
    logistic regression with the trials weighted for --prior; the file
    records what the scores were made with (network, model digest,
    normalisation, cohort size), and 'bob pytorch score --calibration'
    refuses it for scores made otherwise.

    \b
    Example:
      bob pytorch score dev.h5 -t dev-trials.txt --norm s-norm --cohort cohort.h5 -o dev-scores.csv
      bob pytorch calibrate dev-scores.csv -o calibration.json
      bob pytorch score eval.h5 -t eval-trials.txt --norm s-norm --cohort cohort.h5 --calibration calibration.json -o eval-llr.csv
    """
    _check_output(output)
    from ..calibration import fit_calibration

    try:
        table = score_files.read_scores(scores)
        fitted = fit_calibration(table.scores, table.targets, table.provenance, prior=prior)
        fitted.save(output)
    except (OSError, ValueError) as error:
        raise click.ClickException(_one_line(error)) from None
    click.echo(
        f"wrote {output}: llr = {fitted.slope:.6g} * score + {fitted.offset:.6g}, fitted on {fitted.n_targets} target "
        f"and {fitted.n_nontargets} non-target trials (prior {prior:g}, norm {table.provenance.norm})"
    )


COMMANDS: List[click.Command] = [score, calibrate]
