"""``bob pytorch extract-audio`` options choosing what gets embedded: ``--vad``, ``--window/--step``, ``--segments``.

The options are checked together here (which combine, which need another),
before any model is loaded; the work is done by
:class:`bob.learn.pytorch.regions.RegionRequest` and the extractor's VAD.
"""
from typing import Callable, Optional, TypeVar

import click

from ..regions import RegionRequest, read_segments
from ..vad import VAD_NAMES

__all__ = ["region_options", "region_request", "region_attributes"]

F = TypeVar("F", bound=Callable)


def region_options(function: F) -> F:
    """``--vad``, ``--window``, ``--step``, ``--segments`` and ``--pool-labels``."""
    options = [
        click.option(
            "--vad",
            type=click.Choice(VAD_NAMES),
            default=None,
            help="Embed only the speech frames of each recording, found by this voice activity detector: energy "
            "(two Gaussians on the log energy, as bob.bio.spear's Energy_2Gauss) or silero (the vad extra).",
        ),
        click.option(
            "--window",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="One row per window of this many seconds (with --step), each with its start and end time.",
        ),
        click.option(
            "--step",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Seconds between the starts of two windows (with --window).",
        ),
        click.option(
            "--segments",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="One row per segment of an RTTM (.rttm: file id, onset, duration, speaker) or CSV (.csv: start, "
            "end, optional label and file columns) file, each with its start and end time.",
        ),
        click.option(
            "--pool-labels",
            is_flag=True,
            help="With --segments: one row per label (speaker), the normalised mean of its segments' embeddings.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def region_request(
    vad: Optional[str],
    window: Optional[float],
    step: Optional[float],
    segments: Optional[str],
    pool_labels: bool,
    chunk_length: int,
) -> Optional[RegionRequest]:
    """The windows or segments asked for (None for whole recordings); usage errors for options that do not combine."""
    if (window is None) != (step is None):
        raise click.UsageError("--window and --step go together: give both (seconds), e.g. --window 1.5 --step 0.75")
    if window is not None and segments is not None:
        raise click.UsageError("--window and --segments exclude each other: give one of them")
    if pool_labels and segments is None:
        raise click.UsageError("--pool-labels pools the rows of --segments by label: give --segments FILE")
    regions = window is not None or segments is not None
    if chunk_length and (regions or vad):
        used = "--vad" if vad and not regions else "--window" if window is not None else "--segments"
        raise click.UsageError(f"--chunk-length does not combine with {used}: use one of them")
    if vad and regions:
        raise click.UsageError(
            "--vad embeds the speech of whole recordings; window and segment rows embed exactly their samples: "
            "use --vad, or --window/--segments"
        )
    if not regions:
        return None
    if window is not None:
        return RegionRequest(window=window, step=step)
    try:
        table = read_segments(segments)
    except (OSError, ValueError) as error:
        raise click.BadParameter(" ".join(str(error).split()), param_hint="'--segments'") from None
    return RegionRequest(segments=table, pool=pool_labels)


def region_attributes(vad: Optional[str], regions: Optional[RegionRequest]) -> dict:
    """Output file attributes saying what was embedded (only for the options given)."""
    attributes = {} if vad is None else {"vad": vad}
    if regions is not None and regions.window is not None:
        attributes.update(window_s=regions.window, step_s=regions.step)
    if regions is not None and regions.segments is not None:
        attributes.update(segments="pooled by label" if regions.pool else "one row per segment")
    return attributes
