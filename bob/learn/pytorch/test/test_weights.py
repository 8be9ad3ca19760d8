"""The weight file of a network: where it comes from (argument, settings, package folder), its download, its loading."""
import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bob.learn.pytorch import CheckpointError, ModelDownloadError
from bob.learn.pytorch.download import DownloadOptions
from bob.learn.pytorch.errors import SettingsError
from bob.learn.pytorch.weights import (
    DEADLINE_KEY,
    DOWNLOAD_TIMEOUT_KEY,
    MIN_RATE_KEY,
    RUNTIME_CACHE_KEY,
    PACKAGE_KEYS,
    ModelLocation,
    ModelUrl,
    describe_model_files,
    download_options,
    ensure_model_file,
    load_network,
    load_network_file,
    resolve_model_file,
    resolve_model_url,
    resolve_sha256,
)
from bob.learn.pytorch import pretrained
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor, ResNetExtractor

from .conftest import bob12_config_set, write_json, write_toml
from .model_server import sha256_of

DRN = pretrained.get("dltresnet34")
RN = pretrained.get("resnet34")
FAST = DownloadOptions(connect_timeout=2.0, read_timeout=1.0, attempts=2, backoff=0.01, progress=False)
AUDIO = "[bob.learn.pytorch.extractor.audio]\n"


# -- the setting keys, in one module ----------------------------------------------------------------


def test_every_package_setting_key_is_named_here():
    assert PACKAGE_KEYS == (DOWNLOAD_TIMEOUT_KEY, DEADLINE_KEY, MIN_RATE_KEY, RUNTIME_CACHE_KEY) == (
        "bob.learn.pytorch.extractor.audio.download_timeout",
        "bob.learn.pytorch.extractor.audio.download_deadline",
        "bob.learn.pytorch.extractor.audio.download_min_rate",
        "bob.learn.pytorch.runtime_cache",
    )
    from bob.learn.pytorch import download

    assert (download.DEADLINE_KEY, download.MIN_RATE_KEY) == (DEADLINE_KEY, MIN_RATE_KEY)


# -- resolution order -----------------------------------------------------------------------------


def test_defaults_are_the_package_folder_and_the_idiap_urls(data_dir):
    assert resolve_model_file(DRN) == ModelLocation(str(data_dir / "drn34.pth.tar"), "package data folder")
    assert resolve_model_file(RN) == ModelLocation(str(data_dir / "rn34.pth.tar"), "package data folder")
    assert resolve_model_url(DRN) == ModelUrl(
        "https://www.idiap.ch/software/bob/data/bob/bob.learn.pytorch/master/"
        "models_emb128_2drp_dlt_aug_relu__voxceleb___rn34-best.cls.pth.tar",
        "package default (Idiap)",
    )
    assert resolve_model_url(RN).url.endswith("/models_emb128_2drp_aug_relu__voxceleb___rn34-best.cls.pth.tar")


def test_argument_wins_over_every_setting_and_is_made_absolute(isolated_settings, tmp_path, monkeypatch):
    write_toml(isolated_settings, '[bob.learn.pytorch.extractor.audio]\ndrn_modelpath = "/new/drn.pth.tar"\n')
    monkeypatch.chdir(tmp_path)
    assert resolve_model_file(DRN, Path("given.pth.tar")) == ModelLocation(str(tmp_path / "given.pth.tar"), "argument")
    assert resolve_model_file(DRN, "/models/x.pth.tar") == ModelLocation("/models/x.pth.tar", "argument")
    assert resolve_model_file(DRN, "~/x.pth.tar").path == str(isolated_settings / "x.pth.tar")  # HOME is isolated


def test_home_in_a_setting_is_expanded(isolated_settings):
    write_toml(isolated_settings, '[bob.learn.pytorch.extractor.audio]\nrn_modelpath = "~/models/rn.pth.tar"\n')
    assert resolve_model_file(RN).path == str(isolated_settings / "models" / "rn.pth.tar")


def test_variables_in_a_path_setting_are_expanded(isolated_settings, monkeypatch, tmp_path):
    monkeypatch.setenv("MODELS", str(tmp_path / "models"))
    for value, expected in [
        ("$HOME/m/rn.pth.tar", isolated_settings / "m" / "rn.pth.tar"),
        ("${MODELS}/rn.pth.tar", tmp_path / "models" / "rn.pth.tar"),
        ("$MODELS/../rn.pth.tar", tmp_path / "rn.pth.tar"),
    ]:
        toml = write_toml(isolated_settings, f'{AUDIO}rn_modelpath = "{value}"\n')
        assert resolve_model_file(RN) == ModelLocation(str(expected), f"setting {RN.path_key} in {toml}")


def test_a_path_setting_naming_an_unset_variable_is_refused(isolated_settings, monkeypatch, data_dir):
    monkeypatch.delenv("NO_SUCH_FOLDER", raising=False)
    toml = write_toml(isolated_settings, f'{AUDIO}rn_modelpath = "${{NO_SUCH_FOLDER}}/rn.pth.tar"\n')
    with pytest.raises(SettingsError) as caught:
        ensure_model_file(RN)
    assert str(caught.value) == (
        f"setting {RN.path_key} in {toml} names the environment variable ${{NO_SUCH_FOLDER}}, which is not set, in "
        f"'${{NO_SUCH_FOLDER}}/rn.pth.tar'; set the variable or run 'bob config set {RN.path_key} "
        "/absolute/path/to/model.pth.tar'"
    )
    assert not (isolated_settings / "${NO_SUCH_FOLDER}").exists() and not Path("${NO_SUCH_FOLDER}").exists()


@pytest.mark.parametrize("value", ["models/rn.pth.tar", "./rn.pth.tar", "rn.pth.tar"])
def test_a_relative_path_setting_is_refused(isolated_settings, value, tmp_path, monkeypatch, server):
    monkeypatch.chdir(tmp_path)
    toml = write_toml(isolated_settings, f'{AUDIO}rn_modelpath = "{value}"\nrn_url = "{server.url("rn34.pth.tar")}"\n')
    with pytest.raises(SettingsError) as caught:
        ensure_model_file(RN, options=FAST)
    assert str(caught.value) == (
        f"setting {RN.path_key} in {toml} must be an absolute path, not {value!r} (a relative path would change "
        f"with the folder each run starts in); run 'bob config set {RN.path_key} /absolute/path/to/model.pth.tar'"
    )
    assert server.requests == [] and os.listdir(tmp_path) == ["home"]


def test_a_path_setting_must_be_text(isolated_settings):
    write_toml(isolated_settings, "[bob.learn.pytorch.extractor.audio]\ndrn_modelpath = 3\n")
    with pytest.raises(SettingsError, match=f"setting {DRN.path_key} in .* must be a non-empty text, not 3"):
        resolve_model_file(DRN)


def test_sha256_known_for_the_default_url_or_set_for_any(isolated_settings, monkeypatch):
    assert DRN.sha256_key == "bob.learn.pytorch.extractor.audio.drn_sha256"
    record = DRN.__class__(**{**DRN.__dict__, "sha256": "ab" * 32})
    assert resolve_sha256(record, record.url) == "ab" * 32
    assert resolve_sha256(record, "http://mirror/x") is None
    write_toml(isolated_settings, f'[bob.learn.pytorch.extractor.audio]\ndrn_sha256 = "{"CD" * 32}"\n')
    assert resolve_sha256(record, "http://mirror/x") == "cd" * 32


def test_download_timeout_setting(isolated_settings):
    assert download_options() == DownloadOptions()
    write_toml(isolated_settings, "[bob.learn.pytorch.extractor.audio]\ndownload_timeout = 2.5\n")
    assert DOWNLOAD_TIMEOUT_KEY == "bob.learn.pytorch.extractor.audio.download_timeout"
    assert (download_options().connect_timeout, download_options().read_timeout) == (2.5, 2.5)
    write_toml(isolated_settings, "[bob.learn.pytorch.extractor.audio]\ndownload_timeout = 'never'\n")
    with pytest.raises(SettingsError, match="must be a positive number of seconds, not 'never'"):
        download_options()


def test_describe_model_files_lists_both_models(isolated_settings, data_dir):
    toml = write_toml(isolated_settings, '[bob.learn.pytorch.extractor.audio]\nrn_url = "http://m/rn"\n')
    data_dir.mkdir()
    (data_dir / "drn34.pth.tar").write_bytes(b"x")
    drn, rn = describe_model_files()
    assert (drn.record, drn.path, drn.path_source, drn.url, drn.url_source, drn.sha256, drn.exists) == (
        DRN, str(data_dir / "drn34.pth.tar"), "package data folder", DRN.url, "package default (Idiap)", None, True
    )
    assert (rn.record, rn.path, rn.url, rn.url_source, rn.exists) == (
        RN, str(data_dir / "rn34.pth.tar"), "http://m/rn", f"setting {RN.url_key} in {toml}", False
    )


# -- ensure_model_file ----------------------------------------------------------------------------


def test_explicit_missing_file_is_never_downloaded(isolated_settings, server, tmp_path):
    write_toml(isolated_settings, f'[bob.learn.pytorch.extractor.audio]\ndrn_url = "{server.url("drn34.pth.tar")}"\n')
    missing = tmp_path / "nope.pth.tar"
    with pytest.raises(FileNotFoundError, match=f"{missing} \\(the model_file argument\\) does not exist"):
        ensure_model_file(DRN, missing)
    with pytest.raises(FileNotFoundError):
        DltResNetExtractor(str(missing))
    assert server.requests == []
    assert not missing.exists()


def test_existing_file_is_used_without_download(server, drn_file):
    assert ensure_model_file(DRN, drn_file) == str(drn_file)
    assert server.requests == []


def test_missing_default_file_is_downloaded_into_the_data_folder(isolated_settings, server, data_dir, payloads):
    write_toml(isolated_settings, f'[bob.learn.pytorch.extractor.audio]\nrn_url = "{server.url("rn34.pth.tar")}"\n')
    path = ensure_model_file(RN, options=FAST)
    assert path == str(data_dir / "rn34.pth.tar")
    assert Path(path).read_bytes() == payloads["rn34.pth.tar"]
    assert sorted(os.listdir(data_dir)) == ["rn34.pth.tar"]
    assert ensure_model_file(RN, options=FAST) == path
    assert server.requests == [("rn34.pth.tar", "ok")]


def test_download_disabled(isolated_settings, data_dir, server):
    with pytest.raises(FileNotFoundError, match="downloading is disabled"):
        ensure_model_file(DRN, download=False)
    assert server.requests == []


def test_extractor_downloads_to_the_path_set_with_bob_config_set(tmp_path, server, data_dir, payloads):
    """End to end: both settings written by bob 12's CLI; the extractor fetches and loads the file."""
    target = tmp_path / "mine" / "rn34-voxceleb.pth.tar"
    bob12_config_set(RN.path_key, str(target))
    bob12_config_set(RN.url_key, server.url("rn34.pth.tar"))
    extractor = ResNetExtractor()
    assert extractor.model_path == str(target)
    assert target.read_bytes() == payloads["rn34.pth.tar"]
    assert sorted(os.listdir(target.parent)) == ["rn34-voxceleb.pth.tar"]
    assert not data_dir.exists()
    assert extractor.network.em.bias.dtype == torch.float32  # numpy-scalar checkpoint loaded safely
    assert server.requests == [("rn34.pth.tar", "ok")]


def test_failed_download_through_the_extractor(isolated_settings, server, data_dir):
    write_toml(isolated_settings, f'[bob.learn.pytorch.extractor.audio]\ndrn_url = "{server.url("drn34.pth.tar")}"\n')
    server.then("html")
    with pytest.raises(ModelDownloadError) as caught:
        DltResNetExtractor()
    message = str(caught.value)
    assert server.url("drn34.pth.tar") in message and "web page" in message
    assert f"bob config set {DRN.path_key} /path/to/model.pth.tar" in message
    assert os.listdir(data_dir) == []


def test_unwritable_data_folder_says_to_set_the_model_path(isolated_settings, server, data_dir, monkeypatch):
    write_toml(isolated_settings, f'[bob.learn.pytorch.extractor.audio]\nrn_url = "{server.url("rn34.pth.tar")}"\n')
    data_dir.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # a read-only site-packages, even for root
        if os.fspath(path).startswith(str(data_dir)) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(ModelDownloadError) as caught:
        ResNetExtractor()
    message = str(caught.value)
    assert "Read-only file system" in message and str(data_dir) in message
    assert f"bob config set {RN.path_key} /path/to/model.pth.tar" in message
    assert server.requests == []
    assert os.listdir(data_dir) == []


def test_downloaded_file_hash_is_that_of_the_served_bytes(isolated_settings, server, data_dir, payloads):
    digest = hashlib.sha256(payloads["drn34.pth.tar"]).hexdigest()
    write_toml(
        isolated_settings,
        f'[bob.learn.pytorch.extractor.audio]\ndrn_url = "{server.url("drn34.pth.tar")}"\ndrn_sha256 = "{digest}"\n',
    )
    assert sha256_of(ensure_model_file(DRN, options=FAST)) == digest
    shutil.rmtree(data_dir)
    write_toml(
        isolated_settings,
        f'[bob.learn.pytorch.extractor.audio]\ndrn_url = "{server.url("drn34.pth.tar")}"\ndrn_sha256 = "{"f" * 64}"\n',
    )
    with pytest.raises(ModelDownloadError, match="sha256 mismatch"):
        ensure_model_file(DRN, options=FAST)
    assert os.listdir(data_dir) == []


# -- settings that pass a type check but would break the download (issue 19) ----------------------

AUDIO = "[bob.learn.pytorch.extractor.audio]\n"


@pytest.mark.parametrize("value", ["inf", "1e300", "nan", "-3", "0", "true", "'never'"])
@pytest.mark.parametrize("key", ["download_timeout", "download_deadline"])
def test_durations_beyond_what_a_socket_takes_are_refused_naming_key_and_file(isolated_settings, key, value):
    toml = write_toml(isolated_settings, f"{AUDIO}{key} = {value}\n")
    with pytest.raises(SettingsError) as caught:
        download_options()
    message = str(caught.value)
    assert f"setting bob.learn.pytorch.extractor.audio.{key} in {toml} must be a positive number of seconds" in message
    assert "(finite, at most 1e+06)" in message


def test_the_same_check_for_the_legacy_json_file(isolated_settings):
    legacy = write_json(isolated_settings / ".bobrc", {DOWNLOAD_TIMEOUT_KEY: float("inf")})
    with pytest.raises(SettingsError, match=f"{DOWNLOAD_TIMEOUT_KEY} in {legacy} must be a positive number"):
        download_options()


def test_deadline_and_minimum_rate_settings(isolated_settings):
    write_toml(isolated_settings, f"{AUDIO}download_deadline = 600\ndownload_min_rate = 0\n")
    options = download_options()
    assert (options.deadline, options.min_rate) == (600.0, 0.0)
    write_toml(isolated_settings, f"{AUDIO}download_min_rate = 2.5\n")
    assert download_options().min_rate == 2500.0
    write_toml(isolated_settings, f"{AUDIO}download_min_rate = -1\n")
    with pytest.raises(SettingsError, match="download_min_rate in .* must be a number of kilobytes per second >= 0"):
        download_options()


@pytest.mark.parametrize("value", ["abc", "ab" * 31, "ab" * 33, "g" * 64, "sha256:" + "ab" * 32])
def test_a_malformed_sha256_setting_is_refused_naming_key_and_file(isolated_settings, value):
    toml = write_toml(isolated_settings, f'{AUDIO}drn_sha256 = "{value}"\n')
    with pytest.raises(SettingsError) as caught:
        resolve_sha256(DRN, "http://mirror/x")
    assert f"setting {DRN.sha256_key} in {toml} must be a sha256 digest (64 hexadecimal digits)" in str(caught.value)


@pytest.mark.parametrize("value", ["ftp://host/x", "file:///tmp/x", "/tmp/model.pth.tar", "http://", "https://[::1/x"])
def test_a_url_setting_that_is_not_http_is_refused_naming_key_and_file(isolated_settings, value):
    toml = write_toml(isolated_settings, f'{AUDIO}drn_url = "{value}"\n')
    with pytest.raises(SettingsError, match=f"setting {DRN.url_key} in {toml} must be an http:// or https:// address"):
        resolve_model_url(DRN)


def test_credentials_of_a_url_setting_stay_out_of_messages_and_logs(isolated_settings, data_dir, caplog, server):
    url = server.url("missing.pth.tar").replace("http://", "http://alice:pa55@")
    write_toml(isolated_settings, f'{AUDIO}drn_url = "{url}"\n')
    import logging

    with caplog.at_level(logging.DEBUG, logger="bob.learn.pytorch"):  # the commands set it to ERROR
        with pytest.raises(ModelDownloadError) as caught:
            ensure_model_file(DRN, options=FAST)
        [info] = describe_model_files([DRN])
    assert info.url == url  # the value itself is kept, for the download
    texts = [str(caught.value)] + [record.getMessage() for record in caplog.records]
    assert any("http://***@127.0.0.1" in text for text in texts[1:])
    assert not any("alice" in text or "pa55" in text for text in texts)


def test_bad_settings_stop_the_extractor_before_any_download(isolated_settings, data_dir, server):
    write_toml(isolated_settings, f'{AUDIO}drn_url = "{server.url("drn34.pth.tar")}"\ndownload_timeout = inf\n')
    with pytest.raises(SettingsError, match="download_timeout"):
        DltResNetExtractor()
    assert server.requests == []


# -- loading: one way to a loaded network -------------------------------------------------------------


def test_load_network_gives_the_file_weights_in_eval_mode(drn_file):
    network = load_network("drn34", drn_file)
    assert isinstance(network, torch.nn.Module) and not network.training and network.net_type == "emb"
    assert all(not module.training for module in network.modules())
    state = torch.load(drn_file, weights_only=False)["state_dict"]
    loaded = network.state_dict()
    assert len(loaded) == len(state)
    assert all(torch.equal(loaded[key[len("module."):] if key.startswith("module.") else key], value) for key, value in state.items())
    assert next(network.parameters()).device == torch.device("cpu")


def test_load_network_refuses_a_file_that_does_not_fit_with_the_hint(drn_file, rn_file):
    with pytest.raises(CheckpointError) as caught:
        load_network("dltresnet34", rn_file)
    message = str(caught.value)
    assert message.startswith(f"{rn_file} does not fit DltResNet: missing keys: ")
    assert message.endswith(". It looks like a ResNet-34 checkpoint: use network='resnet34'.")
    with pytest.raises(CheckpointError) as caught:
        load_network_file(DRN, drn_file, num_classes=10)
    assert str(caught.value) == (
        f"{drn_file} does not fit DltResNet: shape mismatches: fc.weight (file (1211, 1024), network (10, 1024)), "
        "fc.bias (file (1211,), network (10,)), fc1.weight (file (1211, 128), network (10, 128)), fc1.bias (file "
        "(1211,), network (10,)), fc2.weight (file (1211, 128), network (10, 128)), fc2.bias (file (1211,), network "
        "(10,)). Check num_classes and bn_dim against the training run."
    )


def test_load_network_of_a_missing_explicit_file_never_downloads(tmp_path, server):
    with pytest.raises(FileNotFoundError, match="the model_file argument\\) does not exist"):
        load_network("resnet34", tmp_path / "none.pth.tar")
    assert server.requests == []


def test_a_successful_load_builds_nothing_for_an_error_hint(drn_file):
    """No other network is built (on the meta device, which imports torch._dynamo) unless a load fails.

    Measured as ``python -X importtime`` reports the imports of a fresh process
    that loads a network, through the extractor as the command line does.
    """
    code = (
        "import sys\n"
        "from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor\n"
        f"extractor = EmbeddingExtractor('dltresnet34', {str(drn_file)!r}, backend='eager')\n"
        "extractor.network\n"
        "from bob.learn.pytorch import pretrained\n"
        "print(pretrained._meta_network.cache_info().currsize)\n"
    )
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "torch" in imported and "bob.learn.pytorch.weights" in imported
    assert "torch._dynamo" not in imported
    assert "bob.learn.pytorch.download" not in imported  # the file is there: no download machinery
    assert done.stdout.split() == ["0"]  # no network built on the meta device
