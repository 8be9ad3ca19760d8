"""Checked frame-body ONNX models kept on disk: a network is exported once per machine, not once per process.

Exporting a network's frame body to ONNX (:func:`~bob.learn.pytorch.onnx_export.export_frame_body`)
traces it symbolically, which takes seconds; reading the result back takes
milliseconds. :func:`checked_model` keeps each export that passed its check
against the eager network in the user's cache folder:

* **where**: ``$XDG_CACHE_HOME/bob.learn.pytorch`` (``~/.cache/bob.learn.pytorch``
  when ``XDG_CACHE_HOME`` is unset or relative), or the folder named by the
  environment variable :data:`CACHE_ENVIRONMENT`, else by the setting
  :data:`CACHE_SETTING` (``bob config set``); either can be ``off``. The
  entries are in its ``frame-body`` sub-folder; :func:`clear` removes them.
* **key**: everything that changes the export: the network's class, layers
  and source files, a sha256 digest of its weights, the input's frequency
  bins, how the export is made (operator set, options, this package's export
  code) and the versions of torch, onnx, onnxscript, onnx-ir and onnxruntime.
  A change in any of them makes a new entry.
* **an entry** is ``<key>.onnx`` and its index ``<key>.json``, which holds the
  key's components and the sha256 of the model. Both are written whole or not
  at all (:func:`bob.learn.pytorch.atomic.replacing`), the model first, the
  index only after the model passed its check: a model is used only when its
  digest is the one in the index, so only the very file that passed is ever
  used. A truncated, damaged or stale entry (other key, other digest, a model
  without index) is a miss and is exported and written again.
* **size**: at most :data:`MAX_ENTRIES` entries are kept; writing one more
  removes those used least recently (reading an entry marks it used).
* **processes**: a process that misses takes the folder's lock (``.lock``,
  :mod:`filelock`) before exporting, so that processes started together
  export once: the others wait, then read the entry. The wait is bounded
  (:data:`LOCK_TIMEOUT`); past it, a process exports for itself and keeps
  nothing. Threads of one process take turns the same way.

A model read from an entry is checked again before it is used, on a short
input (:data:`~bob.learn.pytorch.runtimes.LOAD_PROBE_FRAMES` frames): its
digest proves it is the file that passed the full check, and the short probe
that this machine's runtime still runs it as the eager network does. A model
that fails is exported again. Nothing here ever stops an embedding: a cache
folder that cannot be written is reported once, as a warning, and the export
is then used without being kept.
"""
import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional

import torch

from . import atomic
from .errors import SettingsError
from .settings import get_setting
from .weights import RUNTIME_CACHE_KEY

__all__ = [
    "CACHE_SETTING",
    "CACHE_ENVIRONMENT",
    "OFF_VALUES",
    "LOCK_TIMEOUT",
    "MAX_ENTRIES",
    "CacheLocation",
    "CacheContents",
    "Checked",
    "cache_location",
    "default_folder",
    "cache_key",
    "weights_digest",
    "entry_name",
    "checked_model",
    "contents",
    "clear",
]

logger = logging.getLogger(__name__)

#: Setting (``bob config set``) naming the cache folder, or ``off`` (its key is defined in :mod:`~bob.learn.pytorch.weights`).
CACHE_SETTING = RUNTIME_CACHE_KEY
#: Environment variable naming the cache folder, or ``off``; it takes precedence over the setting.
CACHE_ENVIRONMENT = "BOB_LEARN_PYTORCH_RUNTIME_CACHE"
#: Values of the setting or the environment variable that turn the cache off (any case).
OFF_VALUES = ("off", "false", "no", "0", "none")
#: Sub-folder of the cache folder holding the entries.
SUBFOLDER = "frame-body"
#: Seconds a process waits for another one exporting the same folder's entries before it exports for itself.
LOCK_TIMEOUT = 300.0
#: Most entries kept: a network whose weights keep changing (fine-tuning with ``rebuild_runtime``) makes one per
#: change, about 38 MiB each for the released networks.
MAX_ENTRIES = 8
#: Version of the entries' layout; entries of another version are misses.
FORMAT = 1
#: Packages whose versions are part of the key (besides torch).
_VERSIONED = ("onnx", "onnxscript", "onnx-ir", "onnxruntime", "bob.learn.pytorch")
#: Names of the files of an entry and of the temporaries :func:`bob.learn.pytorch.atomic.replacing` leaves when killed.
_ENTRY_FILE = re.compile(r"\.?[0-9a-f]{32}\.(onnx|json)(\..*\.partial)?")

#: Threads of this process take turns to export (the file lock is per process).
_build_lock = threading.Lock()
#: Folders already reported as unusable, so that each is reported once per process.
_reported: set = set()


class CacheLocation(NamedTuple):
    """Where the cache is (``folder`` None when it is off) and which setting says so."""

    folder: Optional[Path]
    source: str

    @property
    def entries(self) -> Optional[Path]:
        """The folder of the entries, or None when the cache is off."""
        return None if self.folder is None else self.folder / SUBFOLDER


class CacheContents(NamedTuple):
    """What the cache holds: complete entries and their size in bytes (models and indexes)."""

    entries: int
    size: int


class Checked(NamedTuple):
    """What a check of a model made (``value``, e.g. a runtime), whether it passed, and its measured differences."""

    value: Any
    passed: bool
    details: Mapping[str, float]


def default_folder() -> Path:
    """``$XDG_CACHE_HOME/bob.learn.pytorch``, or ``~/.cache/bob.learn.pytorch`` (a relative variable is ignored)."""
    cache_home = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache_home) if os.path.isabs(cache_home) else Path.home() / ".cache"
    return base / "bob.learn.pytorch"


def _folder_value(value: Any, source: str) -> Optional[Path]:
    """A setting's value as the cache folder: None for ``off``; an absolute path (``~`` expanded) otherwise."""
    if value is False or (isinstance(value, str) and value.strip().lower() in OFF_VALUES):
        return None
    if value is True:
        return default_folder()
    if isinstance(value, str) and os.path.isabs(os.path.expanduser(value.strip())):
        return Path(os.path.expanduser(value.strip()))
    raise SettingsError(f"{source} must be an absolute folder or 'off', got {value!r}")


def cache_location() -> CacheLocation:
    """Where the cache is: the environment variable :data:`CACHE_ENVIRONMENT`, else the setting, else the default.

    Raises
    ------
    SettingsError
        If the variable or the setting is neither an absolute folder (``~``
        allowed) nor one of :data:`OFF_VALUES`, or a settings file cannot be read.

    Examples
    --------
    >>> import os
    >>> os.environ[CACHE_ENVIRONMENT] = "off"
    >>> cache_location()
    CacheLocation(folder=None, source='environment variable BOB_LEARN_PYTORCH_RUNTIME_CACHE')
    >>> del os.environ[CACHE_ENVIRONMENT]
    """
    variable = os.environ.get(CACHE_ENVIRONMENT, "")
    if variable:
        source = f"environment variable {CACHE_ENVIRONMENT}"
        return CacheLocation(_folder_value(variable, source), source)
    setting = get_setting(CACHE_SETTING)
    if setting is not None:
        return CacheLocation(_folder_value(setting.value, setting.source), setting.source)
    return CacheLocation(default_folder(), "default ($XDG_CACHE_HOME, else ~/.cache)")


# -- the key ------------------------------------------------------------------------------------


def weights_digest(network: torch.nn.Module) -> str:
    """sha256 of the network's state (every parameter and buffer: name, dtype, shape and bytes), in hex."""
    digest = hashlib.sha256()
    for name, value in network.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def _source_digests(classes: List[type]) -> Dict[str, str]:
    """sha256 of the source file of each class not from torch or Python itself, by module name."""
    digests = {}
    for cls in classes:
        module = sys.modules.get(cls.__module__)
        path = getattr(module, "__file__", None)
        if path and not cls.__module__.startswith(("torch.", "builtins")) and os.path.isfile(path):
            digests[cls.__module__] = _file_digest(path)
    return digests


@functools.lru_cache(maxsize=None)
def _versions() -> Dict[str, str]:
    """Versions of torch and of the exporter's and runtime's packages (read from their metadata, nothing imported)."""
    versions = {"torch": torch.__version__}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cache_key(network: torch.nn.Module, bins: int) -> Dict[str, Any]:
    """Everything that changes the frame body's export of ``network`` for ``bins`` frequency bins, as JSON values.

    The components are: the entries' :data:`FORMAT`; the network's class, its
    ``repr`` (its layers) and the source files of its classes; the digest of
    its weights (:func:`weights_digest`); ``bins``; how the export is made
    (:func:`~bob.learn.pytorch.onnx_export.export_settings`, the operator set
    and the digest of the exporting module's source); the versions of torch,
    onnx, onnxscript, onnx-ir, onnxruntime and this package.
    """
    from . import onnx_export

    classes = [cls for cls in type(network).__mro__ if issubclass(cls, torch.nn.Module)]
    key = {
        "format": FORMAT,
        "architecture": f"{type(network).__module__}.{type(network).__qualname__}",
        "layers": repr(network),
        "sources": _source_digests(classes),
        "weights": weights_digest(network),
        "bins": int(bins),
        "export": {
            "opset": onnx_export.OPSET,
            "settings": onnx_export.export_settings(),
            "code": _file_digest(onnx_export.__file__),
        },
        "versions": _versions(),
    }
    return json.loads(json.dumps(key))  # as read back from an index (tuples become lists)


def entry_name(key: Mapping[str, Any]) -> str:
    """The entry's file name stem: 32 hexadecimal digits of the sha256 of the key's canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


# -- entries ------------------------------------------------------------------------------------


def _read_entry(folder: Path, name: str, key: Mapping[str, Any]) -> Optional[bytes]:
    """The entry's model if it is complete, of this key and the very file its index names; None otherwise."""
    index_path, model_path = folder / f"{name}.json", folder / f"{name}.onnx"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        model = model_path.read_bytes()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.info("runtime cache entry %s cannot be read (%s); exporting again", index_path, error)
        return None
    if not isinstance(index, dict) or index.get("key") != key:
        logger.info("runtime cache entry %s is of another key; exporting again", index_path)
        return None
    if hashlib.sha256(model).hexdigest() != index.get("sha256"):
        logger.info("runtime cache entry %s is not the file that passed its check; exporting again", model_path)
        return None
    return model


def _write_entry(folder: Path, name: str, key: Mapping[str, Any], model: bytes, details: Mapping[str, float]) -> None:
    """Write the model, then its index naming its digest (each whole or not at all)."""
    with atomic.replacing(folder / f"{name}.onnx", "a cached ONNX model") as temporary:
        temporary.write_bytes(model)
    index = {"key": key, "sha256": hashlib.sha256(model).hexdigest(), "bytes": len(model), "check": dict(details)}
    with atomic.replacing(folder / f"{name}.json", "a cached ONNX model's index") as temporary:
        temporary.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _report_once(folder: Path, problem: str) -> None:
    if folder not in _reported:
        _reported.add(folder)
        logger.warning("runtime cache %s: %s; the export is used without being kept", folder, problem)


def _make_folder(folder: Path) -> None:
    """Create the entries' folder; the folders created are private (0700), as the XDG specification asks."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
        except FileExistsError:
            pass


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[bool]:
    """Hold this process's turn and the folder's lock; yields False if the lock cannot be had (then nothing is kept)."""
    import filelock

    with _build_lock:
        try:
            _make_folder(folder)
            lock = filelock.FileLock(str(folder / ".lock"), timeout=LOCK_TIMEOUT)
            lock.acquire()
        except filelock.Timeout:
            _report_once(folder, f"another process held its lock for more than {LOCK_TIMEOUT:g} s")
            yield False
            return
        except OSError as error:
            _report_once(folder, error.strerror or str(error))
            yield False
            return
        try:
            yield True
        finally:
            lock.release()


def checked_model(
    network: torch.nn.Module,
    bins: int,
    location: CacheLocation,
    export: Callable[[], bytes],
    check: Callable[[bytes, bool], Checked],
) -> Checked:
    """The frame body's model checked by ``check``, from the cache when an entry holds it, else from ``export``.

    Parameters
    ----------
    network : torch.nn.Module
        The network exported (for the key).
    bins : int
        Frequency bins of its input.
    location : CacheLocation
        The cache (:func:`cache_location`); off when its folder is None.
    export : callable
        Makes the model's bytes.
    check : callable
        ``check(model, fresh)`` checks a model; ``fresh`` is True for a model
        just exported (the full check), False for one read from an entry.

    Returns
    -------
    Checked
        The last check made: of the entry's model if it passed, else of a new
        export, which is written to the cache only if it passed.
    """
    folder = location.entries
    if folder is None:
        return check(export(), True)
    key = cache_key(network, bins)
    name = entry_name(key)
    model = _read_entry(folder, name, key)
    if model is not None:
        checked = check(model, False)
        if checked.passed:
            logger.debug("frame body read from the runtime cache: %s", folder / f"{name}.onnx")
            with contextlib.suppress(OSError):  # marks the entry used (read-only caches stay usable)
                os.utime(folder / f"{name}.json")
            return checked
        logger.warning("the runtime cache's model %s fails its check here; exporting again", folder / f"{name}.onnx")
    with _exclusive(folder) as held:
        again = _read_entry(folder, name, key) if held else None
        if again is not None and again != model:  # written meanwhile by another process
            checked = check(again, False)
            if checked.passed:
                return checked
        fresh = export()
        checked = check(fresh, True)
        if checked.passed and held:
            try:
                _write_entry(folder, name, key, fresh, checked.details)
            except OSError as error:
                _report_once(folder, error.strerror or str(error))
            _remove_least_used(folder, MAX_ENTRIES)
    return checked


def _remove_least_used(folder: Path, keep: int) -> None:
    """Remove the entries beyond the ``keep`` used most recently (by their index's modification time)."""
    used = []
    for index in folder.glob("*.json"):
        if _ENTRY_FILE.fullmatch(index.name):
            with contextlib.suppress(OSError):
                used.append((index.stat().st_mtime, index))
    used.sort(reverse=True)
    for _, index in used[keep:]:
        for path in (index, index.with_suffix(".onnx")):
            with contextlib.suppress(OSError):
                path.unlink()


# -- what the cache holds ------------------------------------------------------------------------


def _entry_files(folder: Optional[Path]) -> List[Path]:
    try:
        return [path for path in folder.iterdir() if _ENTRY_FILE.fullmatch(path.name)] if folder else []
    except OSError:
        return []


def contents(location: Optional[CacheLocation] = None) -> CacheContents:
    """How many complete entries the cache holds (model and index) and their size in bytes."""
    location = location or cache_location()
    files = {path.name: path for path in _entry_files(location.entries) if not path.name.startswith(".")}
    names = {name[:-5] for name in files if name.endswith(".json") and name[:-5] + ".onnx" in files}
    size = 0
    for name in names:
        for suffix in (".onnx", ".json"):
            with contextlib.suppress(OSError):
                size += files[name + suffix].stat().st_size
    return CacheContents(len(names), size)


def clear(location: Optional[CacheLocation] = None) -> int:
    """Remove the cache's entries (and temporaries of killed writes); returns the number of files removed.

    Only files named as entries are removed, so a cache folder set to a folder
    holding other files keeps them.
    """
    location = location or cache_location()
    removed = 0
    for path in _entry_files(location.entries):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed
