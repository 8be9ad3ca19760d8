"""Where a pretrained model file comes from, and getting it when it is missing.

The file to load is, in this order:

1. the ``model_file`` argument given to the extractor (it must exist);
2. the user setting ``bob.learn.pytorch.extractor.audio.drn_modelpath``
   (DltResNet) or ``...rn_modelpath`` (ResNet), written by ``bob config set``
   under either ``bob`` command (see :mod:`bob.learn.pytorch.settings`);
3. the package data folder (``record.default_path``).

In cases 2 and 3 a missing file is downloaded from the setting ``...drn_url`` /
``...rn_url`` or else from the original Idiap address (``record.url``).
"""
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, List, NamedTuple, Optional, Sequence, Union

from .download import DownloadOptions, download_model
from .errors import SettingsError
from .settings import SettingValue, get_setting

if TYPE_CHECKING:  # the extractor module imports this one: no import cycle at run time
    from .preprocessor.audio.weights import PretrainedModel

__all__ = [
    "ModelLocation",
    "ModelUrl",
    "ModelFileInfo",
    "SOURCE_ARGUMENT",
    "SOURCE_PACKAGE_DATA",
    "SOURCE_PACKAGE_URL",
    "DOWNLOAD_TIMEOUT_KEY",
    "sha256_key",
    "absolute_path",
    "resolve_model_file",
    "resolve_model_url",
    "resolve_sha256",
    "download_options",
    "ensure_model_file",
    "describe_model_files",
    "missing_model_file_message",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Source of a path given as the ``model_file`` argument.
SOURCE_ARGUMENT = "argument"
#: Source of the default path, in the package data folder.
SOURCE_PACKAGE_DATA = "package data folder"
#: Source of the default download address.
SOURCE_PACKAGE_URL = "package default (Idiap)"
#: User setting: seconds to wait for the download server (connection and each read).
DOWNLOAD_TIMEOUT_KEY = "bob.learn.pytorch.extractor.audio.download_timeout"
_SETTINGS_PREFIX = "bob.learn.pytorch.extractor.audio."


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

    record: "PretrainedModel"
    path: str
    path_source: str
    url: str
    url_source: str
    sha256: Optional[str]
    exists: bool


def sha256_key(record: "PretrainedModel") -> str:
    """User setting with the sha256 of the file at the configured URL (``...drn_sha256`` / ``...rn_sha256``)."""
    return record.url_key[: -len("_url")] + "_sha256"


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
    after the process (or a pipeline worker) changes folder.
    """
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def resolve_model_file(record: "PretrainedModel", model_file: Optional[PathLike] = None) -> ModelLocation:
    """Return the file to load for ``record`` and where that choice came from.

    Parameters
    ----------
    record : PretrainedModel
        The pretrained model (``DLTRESNET34_VOXCELEB`` or ``RESNET34_VOXCELEB``).
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
    >>> from bob.learn.pytorch.model_files import resolve_model_file
    >>> from bob.learn.pytorch.preprocessor.audio.weights import DLTRESNET34_VOXCELEB
    >>> resolve_model_file(DLTRESNET34_VOXCELEB, "/models/drn34.pth.tar")
    ModelLocation(path='/models/drn34.pth.tar', source='argument')
    """
    if model_file is not None:
        return ModelLocation(absolute_path(model_file), SOURCE_ARGUMENT)
    setting = _text_setting(record.path_key)
    if setting is not None:
        return ModelLocation(absolute_path(setting.value.strip()), setting.source)
    return ModelLocation(record.default_path, SOURCE_PACKAGE_DATA)


def resolve_model_url(record: "PretrainedModel") -> ModelUrl:
    """Return the download address for ``record`` (setting ``...drn_url`` / ``...rn_url``, else ``record.url``)."""
    setting = _text_setting(record.url_key)
    if setting is not None:
        return ModelUrl(setting.value.strip(), setting.source)
    return ModelUrl(record.url, SOURCE_PACKAGE_URL)


def resolve_sha256(record: "PretrainedModel", url: str) -> Optional[str]:
    """The sha256 expected for the file at ``url``, when one is known.

    The setting :func:`sha256_key` applies to whatever URL is used; ``record.sha256``
    applies only to the default address ``record.url``.
    """
    setting = _text_setting(sha256_key(record))
    if setting is not None:
        return setting.value.strip().lower()
    return record.sha256 if url == record.url else None


def download_options() -> DownloadOptions:
    """Default download options; the setting ``...download_timeout`` sets both timeouts (seconds)."""
    setting = get_setting(DOWNLOAD_TIMEOUT_KEY)
    if setting is None:
        return DownloadOptions()
    seconds = _positive_number(setting)
    return DownloadOptions(connect_timeout=seconds, read_timeout=seconds)


def _positive_number(setting: SettingValue) -> float:
    value: Any = setting.value
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if isinstance(value, bool) or not seconds > 0:
        raise SettingsError(f"{setting.source} must be a positive number of seconds, not {value!r}")
    return seconds


def ensure_model_file(
    record: "PretrainedModel",
    model_file: Optional[PathLike] = None,
    *,
    trust: bool = False,
    download: bool = True,
    options: Optional[DownloadOptions] = None,
) -> str:
    """Resolve the model file of ``record``, downloading it when it is missing.

    Parameters
    ----------
    record : PretrainedModel
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
    if location.source == SOURCE_ARGUMENT:
        raise FileNotFoundError(f"{record.title} model file {location.path} (the model_file argument) does not exist")
    if not download:
        raise FileNotFoundError(
            f"{record.title} model file {location.path} (from the {location.source}) does not exist and "
            f"downloading is disabled; put the file there or run 'bob config set {record.path_key} "
            "/path/to/model.pth.tar'"
        )
    url = resolve_model_url(record)
    logger.info(
        "%s model file %s (from the %s) is missing; fetching it from %s (%s)",
        record.title, location.path, location.source, url.url, url.source,
    )
    return download_model(
        record,
        location.path,
        url.url,
        sha256=resolve_sha256(record, url.url),
        trust=trust,
        options=download_options() if options is None else options,
    )


def missing_model_file_message(path: PathLike) -> str:
    """What to say when a model file that was resolved earlier is missing where it is opened.

    A pipeline resolves the model path in the process that starts it (``bob bio
    pipeline simple``), and every dask worker opens that same path, perhaps on
    another host, which may not see the file. The message names the host, the
    settings and the two ways to give every host the file.

    Parameters
    ----------
    path : str or os.PathLike
        The model file that does not exist.

    Returns
    -------
    str
        One paragraph, without a trailing full stop.

    Examples
    --------
    >>> message = missing_model_file_message("/models/drn34.pth.tar")
    >>> message.startswith("model file /models/drn34.pth.tar does not exist on host ")
    True
    """
    drn_key, rn_key = _SETTINGS_PREFIX + "drn_modelpath", _SETTINGS_PREFIX + "rn_modelpath"
    return (
        f"model file {os.fspath(path)} does not exist on host {socket.gethostname()}. A pipeline resolves "
        f"its model file where it starts (setting {drn_key} or {rn_key}, else the package data folder) and "
        "every dask worker opens that same path: put the file in a folder that every host sees at that path "
        f"and run 'bob config set {drn_key} PATH' ({rn_key} for ResNet-34), or run 'bob pytorch "
        "download-models' on each host beforehand, with the same setting"
    )


def describe_model_files(
    records: Optional[Sequence["PretrainedModel"]] = None,
) -> List[ModelFileInfo]:
    """For each pretrained model: the resolved path, the URL, their sources, and whether the file exists.

    Nothing is downloaded; this is what ``bob pytorch info`` shows.

    Parameters
    ----------
    records : sequence of PretrainedModel, optional
        Default: the DltResNet-34 and ResNet-34 VoxCeleb models, in that order.
    """
    if records is None:
        from .preprocessor.audio.weights import DLTRESNET34_VOXCELEB, RESNET34_VOXCELEB

        records = (DLTRESNET34_VOXCELEB, RESNET34_VOXCELEB)
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
