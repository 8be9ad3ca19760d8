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
import errno
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


#: What to do about a settings file that cannot be used, after the cause.
_FIX = "fix or remove it, or change settings with 'bob config set KEY VALUE'"


def _unreadable(path: Path, error: OSError) -> SettingsError:
    """One line naming ``path``, why it cannot be read and what to do."""
    if error.errno == errno.EISDIR or path.is_dir():
        cause = "is a folder, not a file"
    elif error.errno == errno.ELOOP:
        cause = "is a symbolic link that never reaches a file (a loop of links)"
    else:
        cause = f"cannot be read ({error.strerror or error})"
    return SettingsError(f"the bob settings file {path} {cause}; {_FIX}")


def _read_settings(path: Path, parse: Callable[[str], Any]) -> Mapping[str, Any]:
    """The settings held in ``path`` (empty when the file does not exist).

    Raises
    ------
    SettingsError
        In one line naming the file, the cause and the fix, if the file is a
        folder, a loop of links, unreadable, not UTF-8 text, not valid, or
        holds no table.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:  # also a link to a missing file: no settings at all
        return {}
    except UnicodeDecodeError as error:
        raise SettingsError(f"the bob settings file {path} is not UTF-8 text ({error.reason}); {_FIX}") from None
    except OSError as error:
        raise _unreadable(path, error) from None
    if not text.strip():
        return {}
    try:
        content = parse(text)
    except ValueError as error:
        reason = " ".join(str(error).split())
        raise SettingsError(f"the bob settings file {path} is not valid ({reason}); {_FIX}") from None
    if not isinstance(content, Mapping):
        raise SettingsError(f"the bob settings file {path} does not hold a table of settings; {_FIX}")
    return content


def check_bob_config_file() -> None:
    """Raise :class:`SettingsError`, naming the file, if bob 12's settings file exists but cannot be parsed.

    bob.pipelines reads that file when it is imported (through clapper), and
    fails there with a bare error that names no file, when the file exists
    but is a folder or not valid TOML. A link that reaches no file (missing,
    or a loop of links) does not exist for clapper, and is reported only
    when a setting is looked up (:func:`get_setting`).
    """
    path = bob_config_file()
    if path.exists():
        _read_settings(path, _parse_toml)


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
