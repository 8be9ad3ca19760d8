"""``bob pytorch``: the package's commands, plugged into bob's ``bob`` command.

The group is registered in the ``bob.cli`` entry-point group (see setup.py),
so ``bob pytorch --help`` lists the commands below; the package installs no
``bob`` script of its own. ``python -m bob.learn.pytorch.script.pytorch`` runs
the same group without the ``bob`` command.
"""
from __future__ import annotations  # annotations name classes of modules imported only when a command runs

import contextlib
import io
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import clapper.logging
import click
import torch
from clapper.click import AliasedGroup, verbosity_option

from .. import atomic, devices, export_cache, outputs, pretrained, runtimes, settings, weights
from ..errors import CheckpointError, ExportError, ModelDownloadError, RuntimeBuildError, SettingsError
from ..inputs import AudioInput, Embedded, Failure, collect_inputs, embed_inputs

if TYPE_CHECKING:
    from ..preprocessor.audio import EmbeddingExtractor
from . import score as score_commands
from ..regions import RegionRequest
from .region_options import region_attributes, region_options, region_request

logger = logging.getLogger("bob.learn.pytorch")

#: Errors that mean the model cannot be used at all: reported once, in one line, exit 1.
MODEL_ERRORS = (
    CheckpointError,
    ModelDownloadError,
    SettingsError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
    OSError,  # a model path that is not a regular file
)
#: Values of ``--backend``: the runtimes of the network's frame body (see :mod:`bob.learn.pytorch.runtimes`).
BACKEND_CHOICES = runtimes.RUNTIMES

#: A click command function, given options by a decorator.
F = TypeVar("F", bound=Callable[..., object])


class ModelUnavailable(click.ClickException):
    """The model could not be resolved, downloaded or loaded (exit status 1, no traceback)."""


class NetworkName(click.ParamType):
    """A network of the registry, by name or alias, checked when the command line is parsed.

    The registry is read then, not when the command is defined, so networks
    registered by the user's own code are accepted too.
    """

    name = "network"

    def convert(self, value: object, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> pretrained.PretrainedNetwork:
        if isinstance(value, pretrained.PretrainedNetwork):
            return value
        try:
            return pretrained.get(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a registered network; choose one of {', '.join(pretrained.names())}", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: Optional[click.Context] = None) -> str:
        return "[" + "|".join(pretrained.names()) + "]"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _model_problem(error: BaseException) -> str:
    """One line for a model error, naming the command-line option where the message names the argument."""
    line = _one_line(error)
    return line.replace("trust_checkpoint=True", "--trust-checkpoint") if isinstance(error, CheckpointError) else line


def chosen_network(network: Optional[pretrained.PretrainedNetwork], use_res: bool) -> pretrained.PretrainedNetwork:
    """The network of ``--network`` and its alias ``--use-res`` (the original's switch for ``resnet34``)."""
    if not use_res:
        return network or pretrained.get("dltresnet34")
    if network is not None and network.name != "resnet34":
        raise click.UsageError(f"--use-res means --network resnet34, which conflicts with --network {network.name}")
    return pretrained.get("resnet34")


def load_extractor(
    model_file: Optional[str],
    network: pretrained.NetworkLike = "dltresnet34",
    device: str = "cpu",
    trust_checkpoint: bool = False,
    backend: str = "auto",
    vad: Optional[str] = None,
) -> EmbeddingExtractor:
    """Build the extractor and load its network now, turning model problems into one-line errors.

    ``backend`` and ``vad`` are passed on to the extractor (see :data:`BACKEND_CHOICES`).
    """
    from ..preprocessor.audio import EmbeddingExtractor

    torch_device = parse_device(device)
    check_backend(backend)
    try:
        extractor = EmbeddingExtractor(
            network, model_file, device=torch_device, trust_checkpoint=trust_checkpoint, backend=backend, vad=vad
        )
        with exporter_output_logged():
            extractor.network  # noqa: B018 - load now, so that a bad file fails before any recording is read
    except MODEL_ERRORS as error:
        raise ModelUnavailable(_model_problem(error)) from None
    except RuntimeBuildError as error:
        raise click.ClickException(f"--backend {backend}: {_one_line(error)}") from None
    except (RuntimeError, AssertionError) as error:  # e.g. CUDA requested but not available
        raise ModelUnavailable(f"cannot load the model on device '{device}': {_one_line(error)}") from None
    return extractor


@contextlib.contextmanager
def exporter_output_logged() -> Iterator[None]:
    """Send what is printed on ``sys.stderr`` inside the block to the DEBUG log (``-vvv``) instead.

    Used while a network is loaded or exported: for a network that it cannot
    trace, ``torch.export`` prints the partial graph of each attempt (dozens of
    lines) before raising the error that the command reports in one line. The
    command's own messages go through its log handlers, which keep their stream.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            yield
    finally:
        if printed.getvalue().strip():
            logger.debug("printed while the network was loaded or exported:\n%s", printed.getvalue().rstrip())


def parse_device(device: str) -> torch.device:
    """``--device`` as a torch device, checked before any work.

    A usage error (exit status 2) when torch does not know it or it can never
    compute embeddings (``meta``, ``cpu:1``); a one-line error (exit status 1)
    when this machine cannot reach it (``cuda`` without a GPU, ``mps`` off a Mac).
    """
    try:
        return devices.check_device(device)
    except ValueError as error:
        raise click.BadParameter(_one_line(error), param_hint="'--device'") from None
    except RuntimeError as error:
        raise ModelUnavailable(f"cannot load the model on device '{device}': {_one_line(error)}") from None


def check_backend(backend: str) -> str:
    """``--backend`` if it can be used here; a one-line error (exit status 1) naming the fix otherwise.

    Click's choice has already refused unknown names; what is left is an
    explicit ``onnxruntime`` without the ``fast`` extra installed.
    """
    try:
        return runtimes.check_runtime_name(backend)
    except (ImportError, ValueError) as error:
        raise click.ClickException(_one_line(error)) from None


@contextlib.contextmanager
def progress_reporter(total: int, show: bool, label: str) -> Iterator:
    """A click progress bar on stderr when ``show``, else a function that does nothing."""
    if not show:
        yield lambda done: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update


def check_chunk_length(value: int, network: pretrained.PretrainedNetwork) -> int:
    """``--chunk-length`` if the network can embed chunks that long; a usage error (exit status 2) otherwise."""
    if 0 < value < network.min_frames:
        raise click.BadParameter(
            f"{value} frames is shorter than the {network.min_frames} frames the network needs; use 0 (whole "
            f"recording) or at least {network.min_frames}",
            param_hint="'--chunk-length' / '-L'",
        )
    return value


_MODEL_FILE_OPTION = click.option(
    "--model",
    "-m",
    "model_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Model file (.pth.tar). Default: the network's user setting (see 'bob pytorch info'), else the "
    "package's copy, downloaded when missing.",
)
_TRUST_OPTION = click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow full unpickling of the model file (only for files you trust: it can run code).",
)


def _with_options(function: F, options: Sequence[Callable[[F], F]]) -> F:
    for option in reversed(options):
        function = option(function)
    return function


def output_option(help_text: str) -> Callable[[F], F]:
    """``--output/-o FILE``, required, with ``help_text``."""
    return click.option(
        "--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True), help=help_text
    )


def whole_number_option(*names: str, default: int, minimum: int, help_text: str) -> Callable[[F], F]:
    """An integer option of at least ``minimum`` (click refuses less), with ``help_text`` and its default shown."""
    return click.option(*names, default=default, show_default=True, type=click.IntRange(min=minimum), help=help_text)


def model_file_options(function: F) -> F:
    """``--model`` and ``--trust-checkpoint``."""
    return _with_options(function, [_MODEL_FILE_OPTION, _TRUST_OPTION])


def model_options(function: F) -> F:
    """``--network``, ``--model``, ``--use-res``, ``--device`` and ``--trust-checkpoint``, shared by the commands."""
    options = [
        click.option(
            "--network",
            "-n",
            type=NetworkName(),
            default=None,
            help="Registered network (default dltresnet34); 'bob pytorch info' lists them.",
        ),
        _MODEL_FILE_OPTION,
        click.option("--use-res", is_flag=True, help="The original's switch: same as --network resnet34."),
        click.option("--device", "-d", default="cpu", show_default=True, help="Torch device, e.g. cpu, cuda, cuda:1."),
        _TRUST_OPTION,
    ]
    return _with_options(function, options)


@click.group(cls=AliasedGroup, context_settings={"help_option_names": ("-?", "-h", "--help")})
def pytorch() -> None:
    """Speaker embeddings with the DltResNet-34 and ResNet-34 VoxCeleb models."""
    stop_cleanly_on_signals()
    drop_repeated_log_handlers(logging.getLogger("bob"))


def drop_repeated_log_handlers(target: logging.Logger) -> None:
    """Keep one of the handlers that write to the same stream at the same level.

    bob's command and bob.extension's each attach their pair of console
    handlers to the "bob" logger, so that every message under ``-v`` would be
    printed twice.
    """
    seen = set()
    for handler in list(target.handlers):
        key = (type(handler), getattr(handler, "stream", None), handler.level)
        if key in seen:
            target.removeHandler(handler)
        seen.add(key)


def stop_cleanly_on_signals() -> None:
    """Stop a command on Ctrl-C or SIGTERM through an exception, so that its temporary files are removed.

    Ctrl-C raises KeyboardInterrupt again (status 1, ``Aborted!``): bob's
    ``bob`` command has imported ``bob.pipelines`` by now, whose
    ``dask_jobqueue`` replaced the handler with ``sys.exit()``, so that an
    interrupted command would end with status 0 and print nothing. SIGTERM,
    which grid schedulers send to jobs they stop, would end the process at
    once, leaving a download's temporary and lock files behind; it exits
    with status 143 instead, after the cleanup.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    click.echo("Terminated.", err=True)
    raise SystemExit(128 + signum)


@pytorch.command("extract-audio")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@output_option(
    "Output file: .h5/.hdf5 (one dataset per recording), .npy (one record per row: name, chunk, source, "
    "embedding) or .csv."
)
@model_options
@whole_number_option(
    "--chunk-length",
    "-L",
    default=0,
    minimum=0,
    help_text="Chunk length in frames (10 ms each for the released networks); 0 embeds each recording whole, else "
    "one row per chunk (at least the network's minimum, 37 frames for the released networks).",
)
@whole_number_option(
    "--batch-size", "-b", default=8, minimum=1, help_text="Recordings per forward pass (chunks per pass with -L)."
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    type=click.Choice(BACKEND_CHOICES),
    help="Runtime of the network on the CPU. auto: onnxruntime when installed (the fast extra) and it passes its "
    "check against eager, else eager. mnn (the mnn extra) only when named: faster on long recordings, prints on "
    "the standard output, unusable in a process forked after it started.",
)
@region_options
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@verbosity_option(logger=logger)
def extract_audio(
    inputs: Sequence[str],
    output: str,
    network: Optional[pretrained.PretrainedNetwork],
    model_file: Optional[str],
    use_res: bool,
    device: str,
    trust_checkpoint: bool,
    chunk_length: int,
    batch_size: int,
    backend: str,
    quiet: bool,
    vad: Optional[str] = None,
    window: Optional[float] = None,
    step: Optional[float] = None,
    segments: Optional[str] = None,
    pool_labels: bool = False,
    **_: object,
) -> None:
    """Embed WAV recordings into one output file.

    INPUT is a .wav file, a folder (searched recursively for .wav files) or a
    list file (.txt, .lst, .list: one path per line, relative to the list
    file). Each recording becomes one dataset (HDF5) or one row per chunk
    (.npy, .csv), named after its path. A recording that cannot be embedded is
    reported on one line and skipped; the others are still written, and the
    exit status is 1.

    \b
    Example:
      bob pytorch extract-audio recordings/ -o embeddings.h5
      bob pytorch extract-audio a.wav b.wav -o embeddings.csv --network resnet34 -L 300
      bob pytorch extract-audio recordings/ -o embeddings.h5 --backend eager
      bob pytorch extract-audio recordings/ -o speech.h5 --vad energy
      bob pytorch extract-audio talk.wav -o windows.csv --window 1.5 --step 0.75
      bob pytorch extract-audio talk.wav -o speakers.csv --segments talk.rttm --pool-labels
    """
    record = chosen_network(network, use_res)
    check_chunk_length(chunk_length, record)
    regions = region_request(vad, window, step, segments, pool_labels, chunk_length)
    try:
        outputs.output_format(output)
        items, problems = collect_inputs(inputs)
        items, unnamed = outputs.check_names(items, output)
    except ValueError as error:  # unknown output suffix or two recordings with one name
        raise click.UsageError(_one_line(error)) from None
    problems += unnamed
    report_failures(problems)
    if not items:
        raise click.ClickException("no recording to embed")
    parse_device(device)
    check_backend(backend)
    try:
        created = outputs.prepare_output(output)
    except OSError as error:
        raise click.ClickException(_one_line(error)) from None
    try:
        _extract_and_write(items, problems, output, model_file, record, device, trust_checkpoint, backend,
                           chunk_length, batch_size, quiet, vad, regions)
    except BaseException:
        atomic.remove_empty_folders(created)  # a failed run leaves no folder it made
        raise


def _extract_and_write(
    items: Sequence[AudioInput],
    problems: Sequence[Failure],
    output: str,
    model_file: Optional[str],
    record: pretrained.PretrainedNetwork,
    device: str,
    trust_checkpoint: bool,
    backend: str,
    chunk_length: int,
    batch_size: int,
    quiet: bool,
    vad: Optional[str] = None,
    regions: Optional[RegionRequest] = None,
) -> None:
    try:
        extractor = load_extractor(model_file, record, device, trust_checkpoint, backend, vad)
    except ImportError as error:  # --vad silero without the vad extra
        raise click.ClickException(f"--vad {vad}: {_one_line(error)}") from None
    attributes = _output_attributes(extractor, chunk_length)
    attributes.update(region_attributes(vad, regions))
    rehearse_output(items, output, attributes, extractor.bn_dim)
    results, failures = run_extraction(
        extractor, items, chunk_length, batch_size, show_progress=_interactive(quiet), regions=regions
    )
    if results:
        try:
            written = outputs.write_output(results, output, attributes)
        except (OSError, ValueError) as error:
            raise click.ClickException(f"cannot write {output}: {_one_line(error)}") from None
        if not quiet:
            rows = sum(len(result.rows) for result in results)
            files = ", ".join(map(str, written))
            click.echo(f"wrote {_count(rows, 'embedding row')} of {_count(len(results), 'recording')} to {files}")
    failed = len(failures) + len(problems)
    if failed:
        kept = "nothing written" if not results else f"{len(results)} written"
        raise click.ClickException(f"{failed} of {failed + len(results)} inputs failed ({kept})")


def rehearse_output(items: Sequence[AudioInput], output: str, attributes: dict, width: int) -> None:
    """Stop before any work if the final write would fail (see :func:`bob.learn.pytorch.outputs.rehearse_output`)."""
    try:
        outputs.rehearse_output(items, output, attributes, width)
    except (OSError, ValueError, TypeError) as error:  # UnicodeEncodeError is a ValueError
        raise click.ClickException(f"cannot write {output}: {_one_line(error)} (nothing was embedded)") from None


def _interactive(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def run_extraction(
    extractor: EmbeddingExtractor,
    items: Sequence[AudioInput],
    chunk_length: int,
    batch_size: int,
    show_progress: bool,
    regions: Optional[RegionRequest] = None,
) -> Tuple[List[Embedded], List[Failure]]:
    """Embed ``items``, reporting each failure on stderr; returns ``(results, failures)``."""
    results: List[Embedded] = []
    failures: List[Failure] = []
    with progress_reporter(len(items), show_progress, "Embedding") as advance:
        for outcome in embed_inputs(extractor, items, chunk_length, batch_size, on_progress=advance, regions=regions):
            if isinstance(outcome, Failure):
                failures.append(outcome)
                if not show_progress:
                    report_failures([outcome])
            else:
                results.append(outcome)
    if show_progress:
        report_failures(failures)
    return results, failures


def report_failures(failures: Sequence[Failure]) -> None:
    """One line per failed input on stderr: ``error: <input>: <reason>``."""
    for failure in failures:
        click.echo(f"error: {failure.source}: {failure.reason}", err=True)


def _output_attributes(extractor: EmbeddingExtractor, chunk_length: int) -> dict:
    return {
        "model": extractor.pretrained.title,
        "network": extractor.pretrained.name,
        "model_file": os.path.abspath(extractor.model_path),
        "chunk_length": chunk_length,
        "sample_rate": extractor.pretrained.front_end.sample_rate,
    }


@pytorch.command("download-models")
@click.argument("networks", nargs=-1, type=NetworkName())
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Validate the downloaded files with full unpickling (only for sources you trust).",
)
@verbosity_option(logger=logger)
def download_models(networks: Sequence[pretrained.PretrainedNetwork], trust_checkpoint: bool, **_: object) -> None:
    """Fetch the networks' model files now (every registered network by default), e.g. before grid jobs.

    Each model goes where it resolves to (see ``bob pytorch info``): the
    network's path setting, else the package data folder. A file already
    there is kept; a missing one is downloaded, checked and moved into place.
    With ONNX Runtime installed (the fast extra), each network's frame body
    is then exported, checked against PyTorch and kept in the runtime cache,
    so that later commands and pipeline workers of this machine (or of any
    machine sharing the cache folder) skip the export.

    \b
    Example (the path setting's key is in 'bob pytorch info'):
      bob config set <path key of dltresnet34> /shared/models/drn34.pth.tar
      bob pytorch download-models dltresnet34
    """
    try:
        cache = export_cache.cache_location()
    except SettingsError as error:
        raise click.ClickException(_one_line(error)) from None
    failed = 0
    for record in networks or pretrained.records():
        try:
            path = weights.ensure_model_file(record, trust=trust_checkpoint)
        except MODEL_ERRORS as error:
            failed += 1
            click.echo(f"error: {record.title}: {_model_problem(error)}", err=True)
            continue
        click.echo(f"{record.title}: {path}")
        try:
            report = prepare_runtime(record, path, trust_checkpoint, cache)
        except click.ClickException as error:
            failed += 1
            click.echo(f"error: {record.title}: {error.format_message()}", err=True)
            continue
        if report:
            click.echo(f"  {report}")
    if failed:
        raise click.ClickException(f"{failed} model(s) could not be made available")


def prepare_runtime(
    record: pretrained.PretrainedNetwork, path: str, trust_checkpoint: bool, cache: export_cache.CacheLocation
) -> str:
    """Load the network with the runtime ``auto`` builds, filling the runtime cache; what was done, in one line.

    Nothing is loaded (``""`` is returned) when ``auto`` means eager here or the cache is off.
    """
    auto = runtimes.AUTO_RUNTIME
    if runtimes.missing_runtime(auto) is not None or cache.entries is None:
        return ""
    extractor = load_extractor(path, record, "cpu", trust_checkpoint, backend="auto")
    if extractor.runtime != auto:
        return f"runtime: eager ({auto} failed its check against eager, nothing kept)"
    return f"runtime: {auto}, checked against eager and kept in {cache.entries}"


@pytorch.command("info")
@verbosity_option(logger=logger)
def info(**_: object) -> None:
    """Show where each model is taken from, the settings that change it, and the network backends.

    Nothing is downloaded and no network is built.

    \b
    Example:
      bob pytorch info
      bob config set <a key it lists> /path/to/rn34.pth.tar
    """
    try:
        described = weights.describe_model_files()
        sections = [describe_model(entry) for entry in described]
        sections.append(describe_settings())
        sections.append(describe_cache())
        sections.append(describe_backends())
    except (SettingsError, ValueError) as error:
        raise click.ClickException(_one_line(error)) from None
    click.echo("\n\n".join("\n".join(lines) for lines in sections))


def describe_model(entry: "weights.ModelFileInfo") -> List[str]:
    """The lines ``info`` prints for one model."""
    record = entry.record
    if entry.exists:
        state = "present"
    elif os.path.isdir(entry.path):
        state = "a folder, not a file: point the setting to the model file"
    elif atomic.not_regular_file_reason(entry.path):
        state = f"{atomic.not_regular_file_reason(entry.path)}: point the setting to the model file"
    else:
        state = "missing: downloaded on first use"
    return [
        f"{record.title} (--network {record.name})",
        f"  model file:   {entry.path} [{state}]",
        f"    from:       {entry.path_source}",
        f"  download URL: {settings.redact_url(entry.url)}",
        f"    from:       {entry.url_source}",
        f"  sha256:       {entry.sha256 or 'not checked (none known for this URL)'}",
    ]


def describe_settings() -> List[str]:
    """The settings files searched and the values of the package's keys."""
    lines = ["settings files (searched in this order):"]
    for path in settings.settings_files():
        lines.append(f"  {path} ({'present' if path.is_file() else 'absent'})")
    lines.append("settings (bob config set KEY VALUE):")
    keys = [key for record in pretrained.records() for key in setting_keys(record)]
    keys += weights.PACKAGE_KEYS
    for key in keys:
        value = settings.get_setting(key)
        lines.append(f"  {key} = {settings.shown(value.value)!r}  ({value.file})" if value else f"  {key}: not set")
    return lines


def setting_keys(record: pretrained.PretrainedNetwork) -> List[str]:
    """The user settings that concern ``record``: model path, download URL, sha256."""
    return [record.path_key, record.url_key, record.sha256_key]


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def describe_cache() -> List[str]:
    """The lines ``info`` prints about the runtime cache: where it is, who says so, what it holds."""
    location = export_cache.cache_location()
    lines = ["runtime cache (frame bodies exported once, checked against eager; 'bob pytorch cache clear' empties it):"]
    if location.entries is None:
        return lines + ["  folder:       off", f"    from:       {location.source}"]
    held = export_cache.contents(location)
    return lines + [
        f"  folder:       {location.entries}",
        f"    from:       {location.source}",
        f"  holds:        {_count(held.entries, 'entry')}, {_size(held.size)}".replace("entrys", "entries"),
    ]


def describe_backends() -> List[str]:
    """The lines ``info`` prints about the runtimes (``--backend``); nothing is imported or built."""
    auto, why = runtimes.auto_runtime()
    uses = f"{auto} (eager if it fails its check against eager)" if auto != "eager" else "eager"
    lines = [
        "network runtimes (extract-audio --backend; devices other than the CPU run eager):",
        f"  available:    {', '.join(runtimes.available_runtimes())}",
        f"  auto uses:    {uses}",
    ] + ([f"  because:      {why}"] if auto != "eager" else [])
    missing = (runtimes.missing_runtime(name) for name in runtimes.OPTIONAL_RUNTIMES)
    return lines + [f"  missing:      {message}" for message in missing if message]


@pytorch.command("export")
@click.argument("network", type=NetworkName())
@output_option("The ONNX file to write, e.g. dltresnet34.onnx.")
@model_file_options
@verbosity_option(logger=logger)
def export(
    network: pretrained.PretrainedNetwork, output: str, model_file: Optional[str], trust_checkpoint: bool, **_: object
) -> None:
    """Write NETWORK as an ONNX model, checked against PyTorch before it is kept.

    The model maps the standardised spectrogram (input 'spectrogram', float32,
    shape (batch, 1, time, bins), each frequency column of each utterance
    scaled to zero mean and unit variance) to the unit-norm embeddings
    (output 'embedding', (batch, dim)); batch and time are free. The file is
    run by ONNX Runtime on two probe inputs and kept only if it matches the
    PyTorch network within 1e-5.

    \b
    Example:
      bob pytorch export dltresnet34 -o dltresnet34.onnx
      bob pytorch export resnet34 -o rn34.onnx --model /path/to/rn34.pth.tar
    """
    from .. import onnx_export

    check_not_the_model_file(output, network, model_file)
    check_backend("onnxruntime")  # the check needs ONNX Runtime (and onnx to export)
    try:
        module = weights.load_network(network, model_file, "cpu", trust_checkpoint=trust_checkpoint)
    except MODEL_ERRORS as error:
        raise ModelUnavailable(_model_problem(error)) from None
    bins = network.front_end.bins
    try:
        with atomic.replacing(output, "the ONNX model") as temporary, exporter_output_logged():
            onnx_export.export_embedding_network(module, str(temporary), bins)
            difference = onnx_export.check_exported_embedding(temporary.read_bytes(), module, bins)
            if not difference <= runtimes.RUNNER_ATOL:
                raise click.ClickException(
                    f"the exported model differs from the PyTorch network by {difference:.3g} "
                    f"(more than {runtimes.RUNNER_ATOL:g}); nothing written"
                )
    except ExportError as error:
        raise click.ClickException(
            f"cannot export {network.title}: {_one_line(error)}; nothing written "
            "('extract-audio --backend eager' still embeds with it)"
        ) from None
    except OSError as error:
        raise click.ClickException(_one_line(error)) from None
    click.echo(
        f"wrote {output}: {network.title}, input '{onnx_export.INPUT_NAME}' (batch, 1, time, {bins}) -> output "
        f"'{onnx_export.EMBEDDING_NAME}' (batch, {network.embedding_dim}); largest difference from PyTorch "
        f"{difference:.1e}"
    )


def _same_file(first: str, second: str) -> bool:
    """Whether two paths name one file: the same inode (hard or symbolic links), or the same path once resolved."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(first) == os.path.realpath(second)


def check_not_the_model_file(output: str, network: pretrained.PretrainedNetwork, model_file: Optional[str]) -> None:
    """A usage error (exit status 2), before any work, if ``--output`` is the model file the command reads."""
    try:
        model = weights.resolve_model_file(network, model_file).path
    except (SettingsError, TypeError) as error:
        raise ModelUnavailable(_model_problem(error)) from None
    if _same_file(output, model):
        raise click.BadParameter(
            f"{output} is the model file the network is read from ({model}); write the ONNX model to another file",
            param_hint="'--output' / '-o'",
        )


@pytorch.group("cache", cls=AliasedGroup)
def cache() -> None:
    """The runtime cache: frame bodies exported to ONNX once and kept ('bob pytorch info' shows where)."""


@cache.command("clear")
@verbosity_option(logger=logger)
def clear_cache(**_: object) -> None:
    """Remove every entry of the runtime cache; the next command that needs one exports it again.

    Deleting the cache folder (shown by 'bob pytorch info') does the same.

    \b
    Example:
      bob pytorch cache clear
    """
    try:
        location = export_cache.cache_location()
    except SettingsError as error:
        raise click.ClickException(_one_line(error)) from None
    if location.entries is None:
        click.echo(f"the runtime cache is off ({location.source}): nothing to remove")
        return
    removed = export_cache.clear(location)
    click.echo(f"removed {_count(removed, 'file')} from {location.entries}")


@pytorch.command("demo")
@model_options
@click.option(
    "--output",
    "-o",
    "output_dir",
    default="demo-output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for embeddings.h5 and similarity.csv.",
)
@verbosity_option(logger=logger)
def demo(
    network: Optional[pretrained.PretrainedNetwork],
    model_file: Optional[str],
    use_res: bool,
    device: str,
    trust_checkpoint: bool,
    output_dir: str,
    **_: object,
) -> None:
    """Embed the recordings shipped with the package and print their cosine similarities.

    The 17 recordings of 6 speakers in bob/learn/pytorch/data/speech are
    embedded; the similarity matrix is printed with the speaker labels of
    speakers.csv and written with the embeddings to the output folder.

    \b
    Example:
      bob pytorch demo
      bob pytorch demo --model /path/to/drn34.pth.tar -o demo-output
    """
    from .. import demo as demo_module

    extractor = load_extractor(model_file, chosen_network(network, use_res), device, trust_checkpoint)
    try:
        report = demo_module.run_demo(extractor, output_dir)
    except (OSError, ValueError) as error:
        raise click.ClickException(_one_line(error)) from None
    click.echo(report)


for _command in score_commands.COMMANDS:  # score, calibrate (script/score.py)
    pytorch.add_command(_command)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the group as ``bob pytorch`` without the ``bob`` command (``python -m``)."""
    if not logging.getLogger("bob").handlers:  # bob's command sets up the "bob" logger; do the same
        clapper.logging.setup("bob")
    pytorch.main(args=argv, prog_name="bob pytorch")


if __name__ == "__main__":  # pragma: no cover
    main()
