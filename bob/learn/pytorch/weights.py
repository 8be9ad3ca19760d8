"""A network's weight file: the settings that place it, where it comes from, getting it, loading it.

This module owns every user setting of the package (the keys below, and the
keys each network's record names) and is the one way to a loaded network:
:func:`load_network` resolves the file, downloads it when it is missing,
reads it safely and loads it strictly (:mod:`bob.learn.pytorch.checkpoint`).
The extractor, ``bob pytorch export`` and the benchmarks all go through it.

The file to load is, in this order:

1. the ``model_file`` argument given to the extractor (it must exist);
2. the user setting named by the network's record (``record.path_key``),
   written by ``bob config set`` under either ``bob`` command (see
   :mod:`bob.learn.pytorch.settings`): an absolute path, in which ``~``,
   ``$VAR`` and ``${VAR}`` are expanded;
3. the package data folder (``record.default_path``).

In cases 2 and 3 a missing file is downloaded from the address in the setting
``record.url_key``, or else from the record's own (``record.url``); the
records are in :mod:`bob.learn.pytorch.pretrained`.
"""
import logging
import math
import os
import re
import urllib.parse
from typing import TYPE_CHECKING, Any, List, Mapping, NamedTuple, Optional, Sequence, Union

from . import pretrained
from .atomic import not_regular_file_reason
from .checkpoint import clean_state_dict, load_state_dict_strictly, missing_model_file_message, read_checkpoint
from .errors import SettingsError
from .pretrained import PretrainedNetwork, records as registered_networks
from .settings import SettingValue, get_setting, redact_url

if TYPE_CHECKING:  # annotations only: the download machinery (requests, urllib3) is imported when a file is missing
    import torch

    from .download import DownloadOptions

__all__ = [
    "ModelLocation",
    "ModelUrl",
    "ModelFileInfo",
    "SOURCE_ARGUMENT",
    "SOURCE_PACKAGE_DATA",
    "SOURCE_PACKAGE_URL",
    "SETTINGS_PREFIX",
    "DOWNLOAD_TIMEOUT_KEY",
    "DEADLINE_KEY",
    "MIN_RATE_KEY",
    "PACKAGE_KEYS",
    "absolute_path",
    "resolve_model_file",
    "resolve_model_url",
    "resolve_sha256",
    "download_options",
    "ensure_model_file",
    "describe_model_files",
    "missing_model_file_message",
    "load_network",
    "load_network_file",
    "mismatch_hint",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, bytes, "os.PathLike[str]"]

#: Source of a path given as the ``model_file`` argument.
SOURCE_ARGUMENT = "argument"
#: Source of the default path, in the package data folder.
SOURCE_PACKAGE_DATA = "package data folder"
#: Source of the default download address.
SOURCE_PACKAGE_URL = "package default (Idiap)"
#: Prefix of the package's own user settings (``bob config set KEY VALUE``).
SETTINGS_PREFIX = "bob.learn.pytorch.extractor.audio"
#: User setting: seconds to wait for the download server (connection and each read).
DOWNLOAD_TIMEOUT_KEY = f"{SETTINGS_PREFIX}.download_timeout"
#: User setting: seconds a whole download may take, retries included.
DEADLINE_KEY = f"{SETTINGS_PREFIX}.download_deadline"
#: User setting: the slowest acceptable download, in kilobytes (1000 bytes) per second.
MIN_RATE_KEY = f"{SETTINGS_PREFIX}.download_min_rate"
#: User setting: the folder of the runtime cache (:mod:`bob.learn.pytorch.export_cache`), or ``off``.
RUNTIME_CACHE_KEY = "bob.learn.pytorch.runtime_cache"
#: The settings of the package that concern every network (each record names its own three).
PACKAGE_KEYS = (DOWNLOAD_TIMEOUT_KEY, DEADLINE_KEY, MIN_RATE_KEY, RUNTIME_CACHE_KEY)
#: A ``$NAME`` or ``${NAME}`` left in a path after expansion: a variable that is not set.
_UNSET_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


class ModelLocation(NamedTuple):
    """A model file path and where that path came from."""

    path: str
    source: str


class ModelUrl(NamedTuple):
    """A download address and where that address came from."""

    url: str
    source: str


class ModelFileInfo(NamedTuple):
    """Everything :func:`ensure_model_file` would use for one pretrained model."""

    record: PretrainedNetwork
    path: str
    path_source: str
    url: str
    url_source: str
    sha256: Optional[str]
    exists: bool


def _text_setting(key: str) -> Optional[SettingValue]:
    setting = get_setting(key)
    if setting is not None and (not isinstance(setting.value, str) or not setting.value.strip()):
        raise SettingsError(
            f"{setting.source} must be a non-empty text, not {setting.value!r}; "
            f"change it with 'bob config set {key} VALUE'"
        )
    return setting


def absolute_path(path: PathLike) -> str:
    """``path`` with ``~`` expanded, made absolute against the current folder.

    A model path is fixed when it is resolved, so that it names the same file
    after the process (or a pipeline worker) changes folder. A path given as
    bytes is decoded as the file system does (:func:`os.fsdecode`).

    Raises
    ------
    TypeError
        If ``path`` is not a str, bytes or os.PathLike.
    """
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"a model file must be given as a path (str or os.PathLike), not {type(path).__name__}") from None
    return os.path.abspath(os.path.expanduser(text))


def resolve_model_file(record: PretrainedNetwork, model_file: Optional[PathLike] = None) -> ModelLocation:
    """Return the file to load for ``record`` and where that choice came from.

    Parameters
    ----------
    record : PretrainedNetwork
        The network's registry record.
    model_file : str or os.PathLike, optional
        An explicit path, which wins over everything else. A relative path is
        made absolute here, against the current folder, so that a pickled
        extractor finds the same file in a worker started elsewhere.

    Returns
    -------
    ModelLocation
        ``path`` and ``source``: ``"argument"``, ``"setting KEY in FILE"`` or
        ``"package data folder"``.

    Examples
    --------
    >>> from bob.learn.pytorch import pretrained
    >>> resolve_model_file(pretrained.get("dltresnet34"), "/models/drn34.pth.tar")
    ModelLocation(path='/models/drn34.pth.tar', source='argument')
    """
    if model_file is not None:
        return ModelLocation(absolute_path(model_file), SOURCE_ARGUMENT)
    setting = _text_setting(record.path_key)
    if setting is not None:
        return ModelLocation(_setting_path(setting), setting.source)
    return ModelLocation(record.default_path, SOURCE_PACKAGE_DATA)


def _setting_path(setting: SettingValue) -> str:
    """A path setting with ``~``, ``$VAR`` and ``${VAR}`` expanded, which must then be absolute.

    A relative path would name another file in every folder a command or a
    pipeline worker runs in, so it is refused rather than guessed.

    Raises
    ------
    SettingsError
        If the path names an unset variable or is not absolute, naming the key, the file and the fix.
    """
    text = setting.value.strip()
    expanded = os.path.expanduser(os.path.expandvars(text))
    unset = _UNSET_VARIABLE.search(expanded)
    fix = f"run 'bob config set {setting.key} /absolute/path/to/model.pth.tar'"
    if unset:
        raise SettingsError(
            f"{setting.source} names the environment variable {unset.group(0)}, which is not set, in {text!r}; "
            f"set the variable or {fix}"
        )
    if not os.path.isabs(expanded):
        raise SettingsError(
            f"{setting.source} must be an absolute path, not {text!r} (a relative path would change with the "
            f"folder each run starts in); {fix}"
        )
    return os.path.normpath(expanded)


def resolve_model_url(record: PretrainedNetwork) -> ModelUrl:
    """Return the download address for ``record`` (the setting ``record.url_key``, else ``record.url``).

    Raises
    ------
    SettingsError
        If the setting is not an ``http://`` or ``https://`` address with a host.
    """
    setting = _text_setting(record.url_key)
    if setting is None:
        return ModelUrl(record.url, SOURCE_PACKAGE_URL)
    url = setting.value.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise SettingsError(
            f"{setting.source} must be an http:// or https:// address, not {redact_url(url)!r}; "
            f"change it with 'bob config set {record.url_key} URL'"
        )
    return ModelUrl(url, setting.source)


def resolve_sha256(record: PretrainedNetwork, url: str) -> Optional[str]:
    """The sha256 expected for the file at ``url``, when one is known.

    The setting ``record.sha256_key`` applies to whatever URL is used; ``record.sha256``
    applies only to the default address ``record.url``.

    Raises
    ------
    SettingsError
        If the setting is not 64 hexadecimal digits.
    """
    setting = _text_setting(record.sha256_key)
    if setting is None:
        return record.sha256 if url == record.url else None
    digest = setting.value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise SettingsError(
            f"{setting.source} must be a sha256 digest (64 hexadecimal digits), not {setting.value!r}; "
            f"change it with 'bob config set {setting.key} DIGEST'"
        )
    return digest


def download_options() -> "DownloadOptions":
    """Default download options, changed by the user settings.

    ``...download_timeout`` sets both timeouts, ``...download_deadline`` the
    time the whole download may take (seconds) and ``...download_min_rate``
    the slowest acceptable rate (kilobytes per second; 0 accepts any rate).

    Raises
    ------
    SettingsError
        If a setting is not a number in its range, naming the key and the file.
    """
    from .download import DownloadOptions

    values = {}
    timeout = get_setting(DOWNLOAD_TIMEOUT_KEY)
    if timeout is not None:
        values["connect_timeout"] = values["read_timeout"] = _positive_number(timeout)
    deadline = get_setting(DEADLINE_KEY)
    if deadline is not None:
        values["deadline"] = _positive_number(deadline)
    rate = get_setting(MIN_RATE_KEY)
    if rate is not None:
        values["min_rate"] = 1000 * _number(rate, "a number of kilobytes per second >= 0", low=0.0, high=1e9, zero_ok=True)
    return DownloadOptions(**values)


def _positive_number(setting: SettingValue) -> float:
    """A number of seconds > 0 and at most :data:`~bob.learn.pytorch.download.MAX_SECONDS` (about 11.6 days)."""
    from .download import MAX_SECONDS

    return _number(setting, "a positive number of seconds", low=0.0, high=MAX_SECONDS)


def _number(setting: SettingValue, what: str, low: float, high: float, zero_ok: bool = False) -> float:
    value: Any = setting.value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    in_range = (number >= low if zero_ok else number > low) and number <= high
    if isinstance(value, bool) or not (math.isfinite(number) and in_range):
        raise SettingsError(
            f"{setting.source} must be {what}, not {value!r} (finite, at most {high:g}); "
            f"change it with 'bob config set {setting.key} VALUE'"
        )
    return number


def ensure_model_file(
    record: PretrainedNetwork,
    model_file: Optional[PathLike] = None,
    *,
    trust: bool = False,
    download: bool = True,
    options: Optional["DownloadOptions"] = None,
) -> str:
    """Resolve the model file of ``record``, downloading it when it is missing.

    The path is the one :func:`resolve_model_file` gives. A missing file is
    fetched by :func:`~bob.learn.pytorch.download.download_model` from the
    address of :func:`resolve_model_url`, checked against the digest of
    :func:`resolve_sha256` when there is one.

    Parameters
    ----------
    record : PretrainedNetwork
        The pretrained model.
    model_file : str or os.PathLike, optional
        An explicit path. It is never downloaded: it must exist.
    trust : bool
        Validate a downloaded file with full unpickling (the extractor's ``trust_checkpoint``).
    download : bool
        Download a missing file (otherwise raise FileNotFoundError).
    options : DownloadOptions, optional
        Timeouts, retries and progress display (default: :func:`download_options`).

    Returns
    -------
    str
        Path of an existing model file.

    Raises
    ------
    FileNotFoundError
        If an explicit ``model_file`` does not exist, or the file is missing and
        ``download`` is False.
    IsADirectoryError
        If the path names a folder.
    OSError
        If the path names something other than a regular file (a device, a
        FIFO, a socket): "not a regular file". It is never read, written or replaced.
    ModelDownloadError
        If the file is missing and cannot be downloaded or written; nothing is left behind.
    SettingsError
        If a settings file or a setting is invalid.
    """
    location = resolve_model_file(record, model_file)
    if os.path.isfile(location.path):
        return location.path
    if os.path.isdir(location.path):
        raise IsADirectoryError(
            f"{record.title} model file {location.path} (from the {location.source}) is a folder, not a file"
        )
    reason = not_regular_file_reason(location.path)
    if reason:  # never read (it may never end), written or replaced (as root that would destroy a device)
        raise OSError(
            f"{record.title} model file {location.path} (from the {location.source}) is {reason}; "
            f"point it to the model file with 'bob config set {record.path_key} /path/to/model.pth.tar'",
        )
    if location.source == SOURCE_ARGUMENT:
        raise FileNotFoundError(f"{record.title} model file {location.path} (the model_file argument) does not exist")
    if not download:
        raise FileNotFoundError(
            f"{record.title} model file {location.path} (from the {location.source}) does not exist and "
            f"downloading is disabled; put the file there or run 'bob config set {record.path_key} "
            "/path/to/model.pth.tar'"
        )
    from .download import download_model

    url = resolve_model_url(record)
    logger.info(
        "%s model file %s (from the %s) is missing; fetching it from %s (%s)",
        record.title, location.path, location.source, redact_url(url.url), url.source,
    )
    return download_model(
        record,
        location.path,
        url.url,
        sha256=resolve_sha256(record, url.url),
        trust=trust,
        options=download_options() if options is None else options,
    )


def describe_model_files(
    records: Optional[Sequence[PretrainedNetwork]] = None,
) -> List[ModelFileInfo]:
    """For each pretrained model: the resolved path, the URL, their sources, and whether the file exists.

    Nothing is downloaded; this is what ``bob pytorch info`` shows.

    Parameters
    ----------
    records : sequence of PretrainedNetwork, optional
        Default: every registered network, in registration order.
    """
    if records is None:
        records = registered_networks()
    infos = []
    for record in records:
        location = resolve_model_file(record)
        url = resolve_model_url(record)
        infos.append(
            ModelFileInfo(
                record=record,
                path=location.path,
                path_source=location.source,
                url=url.url,
                url_source=url.source,
                sha256=resolve_sha256(record, url.url),
                exists=os.path.isfile(location.path),
            )
        )
    return infos


# -- loading ------------------------------------------------------------------------------------


def mismatch_hint(record: PretrainedNetwork, state: Mapping[str, Any]) -> str:
    """What to say when ``state`` does not fit ``record``'s network: the registered network it fits, if any.

    Computed only when a load has failed: it compares the keys with those of
    every other registered network (:func:`~bob.learn.pytorch.pretrained.parameter_shapes`).

    >>> from bob.learn.pytorch import pretrained
    >>> rn_keys = pretrained.parameter_shapes(pretrained.get("resnet34"))
    >>> mismatch_hint(pretrained.get("dltresnet34"), rn_keys)
    "It looks like a ResNet-34 checkpoint: use network='resnet34'."
    """
    keys = set(state)
    for other in registered_networks():
        if other != record and keys == set(pretrained.parameter_shapes(other)):
            return f"It looks like a {other.title} checkpoint: use network={other.name!r}."
    return "Check num_classes and bn_dim against the training run."


def load_network_file(
    record: PretrainedNetwork,
    path: PathLike,
    device: Union[str, "torch.device"] = "cpu",
    *,
    num_classes: Optional[int] = None,
    bn_dim: Optional[int] = None,
    trust_checkpoint: bool = False,
) -> "torch.nn.Module":
    """``record``'s network with the weights of the file ``path``, on ``device``, in eval mode.

    The file is read safely (:func:`~bob.learn.pytorch.checkpoint.read_checkpoint`),
    cleaned (:func:`~bob.learn.pytorch.checkpoint.clean_state_dict`) and loaded
    strictly (:func:`~bob.learn.pytorch.checkpoint.load_state_dict_strictly`);
    only when it does not fit is the hint of :func:`mismatch_hint` computed.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (the message names the host, for pipelines).
    CheckpointError, UnsafeCheckpointError
        If the file cannot be read safely or does not fit the network.
    """
    path = os.fspath(path)
    network = record.build(num_classes, bn_dim)
    state = clean_state_dict(read_checkpoint(path, map_location=device, trust=trust_checkpoint), source=path)
    load_state_dict_strictly(network, state, source=path, hint=lambda: mismatch_hint(record, state))
    logger.info("loaded %s from %s", record.title, path)
    return network.to(device).eval()


def load_network(
    network: pretrained.NetworkLike,
    model_file: Optional[PathLike] = None,
    device: Union[str, "torch.device"] = "cpu",
    *,
    num_classes: Optional[int] = None,
    bn_dim: Optional[int] = None,
    trust_checkpoint: bool = False,
    download: bool = True,
) -> "torch.nn.Module":
    """A registered network with its weights, ready for inference: the one way to a loaded network.

    The weight file is the one :func:`ensure_model_file` gives (the
    ``model_file`` argument, else the network's path setting, else the
    package data folder, downloaded when missing); it is loaded by
    :func:`load_network_file`.

    Parameters
    ----------
    network : str or PretrainedNetwork
        A registered name or alias, or a record.
    model_file : str or os.PathLike, optional
        An explicit weight file (never downloaded).
    device : str or torch.device
        Where the network is placed.
    num_classes, bn_dim : int, optional
        Sizes of the file's training run (the record's by default).
    trust_checkpoint : bool
        Allow full unpickling of the file (only for files you trust).
    download : bool
        Download a missing file.

    Returns
    -------
    torch.nn.Module
        The network in eval mode and ``emb`` mode, on ``device``.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from bob.learn.pytorch import pretrained
    >>> path = os.path.join(tempfile.mkdtemp(), "rn34.pth.tar")
    >>> torch.save({"state_dict": pretrained.get("resnet34").build().state_dict()}, path)
    >>> network = load_network("resnet34", path)
    >>> network.training, network.net_type
    (False, 'emb')
    """
    record = pretrained.get(network)
    path = ensure_model_file(record, model_file, trust=trust_checkpoint, download=download)
    return load_network_file(
        record, path, device, num_classes=num_classes, bn_dim=bn_dim, trust_checkpoint=trust_checkpoint
    )
