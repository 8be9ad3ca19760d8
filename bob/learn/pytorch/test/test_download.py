"""Downloading a network's weight file: the check of the weights, the size cap, and errors naming the settings.

The generic guarantees of the fetcher (bounds, retries, locks, leftovers) are tested in test_fetch.py."""
import errno
import hashlib
import io
import logging
import multiprocessing
import os
import pickle
from pathlib import Path

import filelock
import pytest
import torch

from bob.learn.pytorch import ModelDownloadError
from bob.learn.pytorch import download
from bob.learn.pytorch.download import DownloadOptions, download_model, expected_parameter_names
from bob.learn.pytorch.fetch import lock_path
from bob.learn.pytorch import pretrained

from .conftest import listing
from .model_server import Payload, construct_extractor, sha256_of

pytestmark = pytest.mark.network

DRN = pretrained.get("dltresnet34")
RN = pretrained.get("resnet34")
FAST = DownloadOptions(connect_timeout=2.0, read_timeout=0.5, attempts=3, backoff=0.01, progress=False)
SET_DRN = "bob config set bob.learn.pytorch.extractor.audio.drn_modelpath /path/to/model.pth.tar"


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "models"
    path.mkdir()
    return path


def fail(server, folder, *modes, record=DRN, name="drn34.pth.tar", options=FAST, **kwargs):
    """Download with the given fault modes; return the error message after checking nothing is left."""
    server.then(*modes)
    with pytest.raises(ModelDownloadError) as caught:
        download_model(record, str(folder / record.filename), server.url(name), options=options, **kwargs)
    assert listing(folder) == []
    message = str(caught.value)
    assert server.url(name) in message
    assert f"bob config set {record.path_key} /path/to/model.pth.tar" in message
    return message


# -- success --------------------------------------------------------------------------------------


def test_success_writes_exactly_the_served_file(server, folder, payloads):
    target = folder / "drn34.pth.tar"
    assert download_model(DRN, str(target), server.url("drn34.pth.tar"), options=FAST) == str(target)
    assert target.read_bytes() == payloads["drn34.pth.tar"]
    assert listing(folder) == ["drn34.pth.tar"]
    assert server.requests == [("drn34.pth.tar", "ok")]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_numpy_scalar_checkpoint_downloads(server, folder, payloads):
    target = folder / "rn34.pth.tar"
    download_model(RN, str(target), server.url("rn34.pth.tar"), options=FAST)
    assert target.read_bytes() == payloads["rn34.pth.tar"]
    assert listing(folder) == ["rn34.pth.tar"]


# -- faults ---------------------------------------------------------------------------------------


def test_a_failure_names_the_model_the_cause_and_the_setting(server, folder):
    message = fail(server, folder, "404")
    assert message == (
        f"could not download the DltResNet-34 model from {server.url('drn34.pth.tar')}: the server answered "
        f"404 Not Found. To use a copy obtained by other means, run: {SET_DRN}"
    )
    assert server.requests == [("drn34.pth.tar", "404")]


def test_html_page_is_refused_without_retry(server, folder):
    message = fail(server, folder, "html")
    assert ": the server sent a web page (text/html) instead of a model file; check the address. " in message
    assert len(server.requests) == 1


def test_bytes_that_are_no_checkpoint_are_refused(server, folder):
    message = fail(server, folder, "garbage")
    assert "not a usable checkpoint" in message
    assert len(server.requests) == 1


def test_checkpoint_of_the_other_network_is_refused(server, folder):
    message = fail(server, folder, name="rn34.pth.tar")
    assert "does not hold DltResNet-34 weights" in message
    assert "missing: bn.bias, bn.num_batches_tracked, bn.running_mean" in message
    assert "(21 in all)" in message


def test_code_running_pickle_is_refused_without_running(server, folder, tmp_path, payloads):
    sentinel = tmp_path / "payload-ran"
    buffer = io.BytesIO()
    torch.save({"state_dict": {"module.em.bias": torch.zeros(128)}, "hook": Payload(sentinel)}, buffer)
    server.files["evil.pth.tar"] = buffer.getvalue()
    message = fail(server, folder, name="evil.pth.tar")
    assert "posix.mkdir" in message and "trust_checkpoint=True" in message
    assert not sentinel.exists()


def test_plain_pickle_payload_is_refused_without_running(server, folder, tmp_path):
    sentinel = tmp_path / "payload-ran"
    server.files["evil.pth.tar"] = pickle.dumps(Payload(sentinel))
    fail(server, folder, name="evil.pth.tar")
    assert not sentinel.exists()


# -- unwritable folder ----------------------------------------------------------------------------


def test_read_only_file_system_says_to_set_the_model_path(server, folder, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(str(folder)) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(ModelDownloadError) as caught:
        download_model(DRN, str(folder / "drn34.pth.tar"), server.url("drn34.pth.tar"), options=FAST)
    message = str(caught.value)
    assert f"into {folder}" in message and "not writable" in message
    assert SET_DRN in message
    assert server.requests == []
    assert listing(folder) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder_says_to_set_the_model_path(server, folder):
    folder.chmod(0o555)
    try:
        with pytest.raises(ModelDownloadError, match="drn_modelpath /path/to/model.pth.tar"):
            download_model(DRN, str(folder / "drn34.pth.tar"), server.url("drn34.pth.tar"), options=FAST)
    finally:
        folder.chmod(0o755)
    assert listing(folder) == []


# -- concurrency ----------------------------------------------------------------------------------


def test_processes_constructing_extractors_download_once(server, tmp_path, monkeypatch, payloads):
    """Several processes (spawned, like dask workers) build the extractor at once: one download, no partial file."""
    data_dir = tmp_path / "data"
    config = tmp_path / "home" / ".config"
    config.mkdir()
    (config / "bobrc.toml").write_text(
        f'[bob.learn.pytorch.extractor.audio]\ndrn_url = "{server.url("drn34.pth.tar")}"\n'
    )
    server.then("trickle")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    processes = [
        context.Process(target=construct_extractor, args=(str(data_dir), False, barrier, results)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    try:
        answers = [results.get(timeout=300) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
    expected_sha = hashlib.sha256(payloads["drn34.pth.tar"]).hexdigest()
    target = str(data_dir / "drn34.pth.tar")
    assert sorted(answers, key=lambda a: a[3]) == sorted(
        [("ok", target, expected_sha, process.pid) for process in processes], key=lambda a: a[3]
    )
    assert server.requests == [("drn34.pth.tar", "trickle")]
    assert listing(data_dir) == ["drn34.pth.tar"]
    assert sha256_of(target) == expected_sha


# -- details --------------------------------------------------------------------------------------


def test_expected_parameter_names_are_those_of_the_networks():
    drn, rn = expected_parameter_names(DRN), expected_parameter_names(RN)
    assert (len(drn), len(rn)) == (261, 240)
    batch_norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    dilated_stem_and_extras = {f"{bn}.{field}" for bn in ("bn", "bn2", "bn3") for field in batch_norm} | {
        "conv2.weight", "conv3.weight", "em2.weight", "em2.bias", "fc2.weight", "fc2.bias"
    }
    assert drn - rn == dilated_stem_and_extras
    assert rn - drn == set()
    assert {"layer4.2.bn2.num_batches_tracked", "em.weight", "fc1.bias"} <= rn
    assert not any(name.startswith("module.") for name in drn | rn)


# -- bounds: deadline, minimum rate, size cap (issue 19, group 1) --------------------------------

DEADLINE_HINT = "bob config set bob.learn.pytorch.extractor.audio.download_deadline SECONDS"
RATE_HINT = "bob config set bob.learn.pytorch.extractor.audio.download_min_rate KB_PER_SECOND"


def bounded(**kwargs):
    values = dict(connect_timeout=2.0, read_timeout=2.0, attempts=3, backoff=0.01, progress=False)
    values.update(kwargs)
    return DownloadOptions(**values)


def test_a_server_sending_a_byte_at_a_time_meets_the_deadline(server, folder):
    """Each byte comes well within the read timeout: only the overall deadline ends the download."""
    message = fail(server, folder, "drip", options=bounded(deadline=0.5, min_rate=0))
    assert "did not finish within its deadline of 0.5 s" in message
    assert DEADLINE_HINT in message
    assert server.requests == [("drn34.pth.tar", "drip")]  # a deadline is not retried


def test_a_server_below_the_minimum_rate_is_left(server, folder):
    message = fail(server, folder, "drip", options=bounded(deadline=60, min_rate=1e9, rate_window=0.2))
    assert "below the minimum of 1e+06 kB/s" in message
    assert RATE_HINT in message
    assert len(server.requests) == 1


def test_an_announced_size_beyond_the_cap_is_refused_before_reading(server, folder):
    message = fail(server, folder, "huge_length")
    assert f"the server sent more than {download_cap(DRN)} bytes" in message
    assert len(server.requests) == 1


def download_cap(record):
    from bob.learn.pytorch.download import model_size_cap

    return model_size_cap(record)


def test_the_default_cap_is_a_generous_multiple_of_the_weights(payloads):
    for record, name in ((DRN, "drn34.pth.tar"), (RN, "rn34.pth.tar")):
        assert 3 * len(payloads[name]) < download_cap(record) < 5 * len(payloads[name])


def test_credentials_in_the_address_never_appear_in_messages_or_logs(server, folder, caplog):
    url = server.url("drn34.pth.tar").replace("http://", "http://alice:s3cr%40t@")
    server.then("500", "404")
    with caplog.at_level(logging.DEBUG, logger="bob.learn.pytorch"):  # the commands set it to ERROR
        with pytest.raises(ModelDownloadError) as caught:
            download_model(DRN, str(folder / "drn34.pth.tar"), url, options=FAST)
    message = str(caught.value)
    assert "http://***@127.0.0.1" in message and "404" in message
    assert caught.value.__cause__ is None  # the cause might quote the address
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "http://***@127.0.0.1" in logged
    for text in (message, logged):
        assert "alice" not in text and "s3cr" not in text


def test_a_waiter_past_its_deadline_is_told_which_setting_to_raise(server, folder):
    """Another process holds the download's lock all the time: the waiter gives up at its own deadline."""
    target = folder / "drn34.pth.tar"
    holder = filelock.FileLock(lock_path(str(target)), thread_local=False)
    with holder:
        with pytest.raises(ModelDownloadError) as caught:
            download_model(DRN, str(target), server.url("drn34.pth.tar"), options=bounded(deadline=0.5))
    assert str(caught.value) == (
        f"could not download the DltResNet-34 model from {server.url('drn34.pth.tar')}: the download did not "
        f"finish within its deadline of 0.5 s: another process downloading the same file held {target}.lock all "
        f"that time (a stopped or hung process holds it until it ends); allow more time with '{DEADLINE_HINT}'. "
        f"To use a copy obtained by other means, run: {SET_DRN}"
    )
    assert server.requests == []


def test_a_temporary_file_removed_by_another_program_is_a_download_error(server, folder, monkeypatch):
    """What another program does to the temporary file never surfaces as a bare FileNotFoundError."""
    monkeypatch.setattr(download, "_check_weights", lambda record, trust, path: os.unlink(path))
    message = fail(server, folder)
    assert "was removed by another program before it could be renamed into place; nothing was written" in message


def test_credentials_in_a_malformed_address_are_not_quoted(folder):
    with pytest.raises(ModelDownloadError) as caught:
        download_model(DRN, str(folder / "drn34.pth.tar"), "htp://alice:secret@127.0.0.1/x", options=FAST)
    assert "secret" not in str(caught.value) and "alice" not in str(caught.value)
