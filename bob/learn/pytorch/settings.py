"""User settings written by ``bob config set``, whichever ``bob`` command wrote them.

Two ``bob`` command-line tools exist and each keeps its own settings file:

- bob 12 writes ``$XDG_CONFIG_HOME/bobrc.toml`` (``~/.config/bobrc.toml`` when
  ``XDG_CONFIG_HOME`` is unset), where a dotted key becomes nested TOML tables;
- bob.extension writes the flat JSON file ``$BOBRC`` (``~/.bobrc`` when
  ``BOBRC`` is unset).

:func:`get_setting` looks a key up in the TOML file first, then in the JSON
file, and says which file the value came from. Both files are only ever read
(``tomllib`` and ``json``), never rewritten: opening ``~/.bobrc`` through
clapper would convert it to TOML in place and break bob.extension.
"""
import json
import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Sequence

from .errors import SettingsError
from .fetch import redact_url  # re-exported: addresses are shown as the fetcher shows them

__all__ = ["SettingValue", "bob_config_file", "legacy_rc_file", "settings_files", "get_setting", "redact_url", "shown"]

logger = logging.getLogger(__name__)


class SettingValue(NamedTuple):
    """A user setting and the file it was read from."""

    key: str
    value: Any
    file: str

    @property
    def source(self) -> str:
        """Human-readable origin, e.g. ``setting KEY in ~/.config/bobrc.toml``."""
        return f"setting {self.key} in {self.file}"


def shown(value: Any) -> Any:
    """A setting's value as it may be shown or logged: addresses without their credentials."""
    return redact_url(value) if isinstance(value, str) and "://" in value else value


def bob_config_file() -> Path:
    """bob 12's settings file: ``$XDG_CONFIG_HOME/bobrc.toml``, else ``~/.config/bobrc.toml``.

    As in the XDG specification (and bob 12), a relative ``XDG_CONFIG_HOME`` is ignored.
    """
    config_home = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config_home) if os.path.isabs(config_home) else Path.home() / ".config"
    return base / "bobrc.toml"


def legacy_rc_file() -> Path:
    """bob.extension's settings file: ``$BOBRC``, else ``~/.bobrc``."""
    override = os.environ.get("BOBRC")
    return Path(override) if override else Path.home() / ".bobrc"


def settings_files() -> List[Path]:
    """The settings files in the order they are searched."""
    return [bob_config_file(), legacy_rc_file()]


def _lookup(table: Mapping[str, Any], parts: Sequence[str]) -> Optional[Any]:
    """Find a dotted key in nested tables, accepting any split into nested and dotted names.

    ``bob config set a.b.c 1`` (bob 12) stores ``{"a": {"b": {"c": 1}}}``; bob.extension
    stores ``{"a.b.c": 1}``; hand-written files may mix both (``[a]`` then ``"b.c" = 1``).

    >>> _lookup({"a": {"b.c": 1}}, ["a", "b", "c"])
    1
    >>> _lookup({"a.b": {"c": 2}}, ["a", "b", "d"]) is None
    True
    """
    for split in range(len(parts), 0, -1):
        head = ".".join(parts[:split])
        if head not in table:
            continue
        value = table[head]
        if split == len(parts):
            return value
        if isinstance(value, Mapping):
            found = _lookup(value, parts[split:])
            if found is not None:
                return found
    return None


def _parse_toml(text: str) -> Any:
    return tomllib.loads(text)


def _parse_json_or_toml(text: str) -> Any:
    """bob.extension's JSON; a file that clapper already converted to TOML is read as TOML."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as json_error:
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            raise json_error from None


def _read_settings(path: Path, parse: Callable[[str], Any]) -> Mapping[str, Any]:
    """The settings held in ``path`` (empty when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise SettingsError(f"cannot read the bob settings file {path}: {error}") from error
    if not text.strip():
        return {}
    try:
        content = parse(text)
    except ValueError as error:
        raise SettingsError(
            f"the bob settings file {path} is not valid ({error}); fix or remove it, "
            "or change settings with 'bob config set KEY VALUE'"
        ) from error
    if not isinstance(content, Mapping):
        raise SettingsError(f"the bob settings file {path} does not hold a table of settings")
    return content


def check_bob_config_file() -> None:
    """Raise :class:`SettingsError`, naming the file, if bob 12's settings file exists but cannot be parsed.

    bob.pipelines reads that file when it is imported, and fails there with a
    bare parser error that names no file.
    """
    _read_settings(bob_config_file(), _parse_toml)


def get_setting(key: str) -> Optional[SettingValue]:
    """Look ``key`` up in bob 12's ``bobrc.toml``, then in bob.extension's ``~/.bobrc``.

    Parameters
    ----------
    key : str
        A dotted key, as given to ``bob config set``.

    Returns
    -------
    SettingValue or None
        The value and the file it came from, or None when no file sets the key
        (a JSON ``null`` counts as unset, as in bob.extension).

    Raises
    ------
    SettingsError
        If a settings file exists but cannot be read or parsed.

    Examples
    --------
    >>> from bob.learn.pytorch.settings import bob_config_file
    >>> bob_config_file().name  # searched first, then legacy_rc_file()
    'bobrc.toml'
    """
    parts = key.split(".")
    for path, parse in ((bob_config_file(), _parse_toml), (legacy_rc_file(), _parse_json_or_toml)):
        value = _lookup(_read_settings(path, parse), parts)
        if value is not None:
            logger.debug("setting %s = %r read from %s", key, shown(value), path)
            return SettingValue(key, value, str(path))
    return None
