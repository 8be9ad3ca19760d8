"""Reading the user settings of either ``bob`` command: files, layouts, precedence, and files that cannot be used."""
import json
import os
import subprocess
import sys

import pytest

from bob.learn.pytorch import pretrained
from bob.learn.pytorch.errors import SettingsError
from bob.learn.pytorch.settings import SettingValue, check_bob_config_file, get_setting, redact_url

from .conftest import bob12_config_set, bob_extension_config_set, write_json, write_toml

DRN = pretrained.get("dltresnet34")
RN = pretrained.get("resnet34")
AUDIO = "[bob.learn.pytorch.extractor.audio]\n"


# -- where settings are read from -----------------------------------------------------------------


def test_bob12_config_set_is_honoured_and_never_rewritten(isolated_settings, tmp_path):
    model = tmp_path / "my models" / "drn.pth.tar"
    bob12_config_set(DRN.path_key, str(model))
    toml = isolated_settings / ".config" / "bobrc.toml"
    before = toml.read_bytes()
    assert b"[bob.learn.pytorch.extractor.audio]" in before  # bob 12 nests the dotted key in tables
    assert get_setting(DRN.path_key) == SettingValue(DRN.path_key, str(model), str(toml))
    assert get_setting(DRN.path_key).source == f"setting {DRN.path_key} in {toml}"
    assert get_setting(RN.path_key) is None
    assert toml.read_bytes() == before
    assert not (isolated_settings / ".bobrc").exists()


def test_bob12_respects_xdg_config_home(monkeypatch, tmp_path):
    config_home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    bob12_config_set(RN.url_key, "http://mirror.example/rn34.pth.tar")
    assert get_setting(RN.url_key) == SettingValue(RN.url_key, "http://mirror.example/rn34.pth.tar", str(config_home / "bobrc.toml"))
    assert get_setting(DRN.url_key) is None


def test_bob_extension_config_set_is_honoured_and_never_rewritten(isolated_settings, tmp_path):
    model = tmp_path / "legacy" / "rn.pth.tar"
    bob_extension_config_set(RN.path_key, str(model))
    legacy = isolated_settings / ".bobrc"
    before = legacy.read_bytes()
    assert json.loads(before) == {RN.path_key: str(model)}
    assert get_setting(RN.path_key) == SettingValue(RN.path_key, str(model), str(legacy))
    assert legacy.read_bytes() == before
    assert not (isolated_settings / ".config" / "bobrc.toml").exists()


def test_legacy_home_bobrc_without_the_bobrc_variable(isolated_settings, monkeypatch):
    monkeypatch.delenv("BOBRC")
    legacy = write_json(isolated_settings / ".bobrc", {DRN.url_key: "http://old.example/drn"})
    assert get_setting(DRN.url_key) == SettingValue(DRN.url_key, "http://old.example/drn", str(legacy))


def test_bobrc_variable_points_to_another_json_file(monkeypatch, tmp_path):
    legacy = write_json(tmp_path / "elsewhere.json", {DRN.path_key: "/srv/models/drn.pth.tar", "other": 1})
    monkeypatch.setenv("BOBRC", str(legacy))
    before = legacy.read_bytes()
    assert get_setting(DRN.path_key) == SettingValue(DRN.path_key, "/srv/models/drn.pth.tar", str(legacy))
    assert legacy.read_bytes() == before


def test_bob12_file_wins_over_the_legacy_file(isolated_settings):
    toml = write_toml(isolated_settings, f'{AUDIO}drn_modelpath = "/new/drn.pth.tar"\n')
    legacy = write_json(isolated_settings / ".bobrc", {DRN.path_key: "/old/drn.pth.tar", RN.path_key: "/old/rn.pth.tar"})
    assert get_setting(DRN.path_key) == SettingValue(DRN.path_key, "/new/drn.pth.tar", str(toml))
    assert get_setting(RN.path_key) == SettingValue(RN.path_key, "/old/rn.pth.tar", str(legacy))  # not in the TOML file


@pytest.mark.parametrize(
    "text",
    [
        '"bob.learn.pytorch.extractor.audio.drn_modelpath" = "/x.pth"\n',
        '[bob.learn]\n"pytorch.extractor.audio.drn_modelpath" = "/x.pth"\n',
        "[bob.learn.pytorch.extractor]\naudio.drn_modelpath = '/x.pth'\n",
    ],
)
def test_hand_written_toml_layouts(isolated_settings, text):
    write_toml(isolated_settings, text)
    assert get_setting(DRN.path_key).value == "/x.pth"


def test_legacy_file_already_converted_to_toml_is_still_read(isolated_settings):
    (isolated_settings / ".bobrc").write_text(f'{AUDIO}rn_url = "http://m/rn"\n')
    assert get_setting(RN.url_key).value == "http://m/rn"


def test_json_null_counts_as_unset(isolated_settings):
    write_json(isolated_settings / ".bobrc", {DRN.path_key: None})
    assert get_setting(DRN.path_key) is None


def test_settings_are_looked_up_by_exact_key(isolated_settings):
    write_toml(isolated_settings, f'{AUDIO}drn_modelpath = "/x"\n')
    assert get_setting("bob.learn.pytorch.extractor.audio.drn_modelpath").value == "/x"
    assert get_setting("bob.learn.pytorch.extractor.audio") is not None  # a table is a value too
    assert get_setting("bob.learn.pytorch.extractor.audio.rn_modelpath") is None
    assert get_setting("learn.pytorch.extractor.audio.drn_modelpath") is None


def test_credentials_are_redacted_for_display():
    assert redact_url("https://alice:s3cret@example.org/m.pth.tar") == "https://***@example.org/m.pth.tar"
    assert redact_url("https://[::1/x@y") == "<an address that cannot be parsed>"


# -- settings files that cannot be used: one line naming the file, the cause and the fix ---------------

FIX = "fix or remove it, or change settings with 'bob config set KEY VALUE'"


def test_broken_settings_file_is_named(isolated_settings):
    toml = write_toml(isolated_settings, "[bob.learn\ndrn_modelpath = 3\n")
    with pytest.raises(SettingsError, match=f"bob settings file {toml} is not valid"):
        get_setting(DRN.path_key)


def _one_line(error: SettingsError) -> str:
    message = str(error)
    assert "\n" not in message and error.__cause__ is None
    return message


def test_a_settings_file_that_is_a_folder(isolated_settings):
    folder = isolated_settings / ".config" / "bobrc.toml"
    folder.mkdir(parents=True)
    with pytest.raises(SettingsError) as caught:
        get_setting(DRN.path_key)
    assert _one_line(caught.value) == f"the bob settings file {folder} is a folder, not a file; {FIX}"
    with pytest.raises(SettingsError, match="is a folder, not a file"):
        check_bob_config_file()  # bob.pipelines would fail on it when imported: reported first


def test_a_settings_file_that_is_a_loop_of_links(isolated_settings):
    link = isolated_settings / ".config" / "bobrc.toml"
    link.parent.mkdir(parents=True)
    link.symlink_to("bobrc.toml")
    with pytest.raises(SettingsError) as caught:
        get_setting(DRN.path_key)
    assert _one_line(caught.value) == (
        f"the bob settings file {link} is a symbolic link that never reaches a file (a loop of links); {FIX}"
    )
    check_bob_config_file()  # for clapper (bob.pipelines) such a file does not exist: nothing to report at import


def test_a_settings_file_that_is_not_valid_toml_or_not_text(isolated_settings):
    toml = write_toml(isolated_settings, "[bob.learn\n")
    with pytest.raises(SettingsError) as caught:
        get_setting(DRN.path_key)
    assert _one_line(caught.value) == (
        f"the bob settings file {toml} is not valid (Expected ']' at the end of a table declaration (at line 1, "
        f"column 11)); {FIX}"
    )
    toml.write_bytes(b'a = "\xff"\n')
    with pytest.raises(SettingsError) as caught:
        get_setting(DRN.path_key)
    assert _one_line(caught.value) == f"the bob settings file {toml} is not UTF-8 text (invalid start byte); {FIX}"
    toml.write_text("[[bob]]\n")
    assert get_setting(DRN.path_key) is None  # an array of tables holds no such key: valid, unset


def test_a_legacy_file_that_is_not_a_table(isolated_settings):
    legacy = isolated_settings / ".bobrc"
    legacy.write_text("[1, 2]")
    with pytest.raises(SettingsError) as caught:
        get_setting(DRN.path_key)
    assert _one_line(caught.value) == f"the bob settings file {legacy} does not hold a table of settings; {FIX}"


def test_a_broken_settings_file_stops_the_command_line_in_one_line(isolated_settings):
    """``python -m bob.learn.pytorch.script.pytorch info`` with a loop of links as bob 12's settings file."""
    link = isolated_settings / ".config" / "bobrc.toml"
    link.parent.mkdir(parents=True)
    link.symlink_to("bobrc.toml")
    done = subprocess.run(
        [sys.executable, "-m", "bob.learn.pytorch.script.pytorch", "info"],
        env=dict(os.environ), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: the bob settings file {link} is a symbolic link that never reaches a file (a loop of links); {FIX}"
    ]
