"""Downloading model files: faults of a local server, validation, locking, no leftovers."""
import errno
import hashlib
import io
import logging
import multiprocessing
import os
import pickle
from pathlib import Path

import pytest
import torch

from bob.learn.pytorch import ModelDownloadError
from bob.learn.pytorch.download import DownloadOptions, _Progress, download_model, expected_parameter_names, file_lock
from bob.learn.pytorch import pretrained

from .model_server import ModelServer, Payload, construct_extractor, sha256_of

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


def listing(path: Path):
    return sorted(entry.name for entry in path.iterdir())


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


def test_existing_target_is_not_downloaded_again(server, folder):
    target = folder / "drn34.pth.tar"
    target.write_bytes(b"already here")
    download_model(DRN, str(target), server.url("drn34.pth.tar"), options=FAST)
    assert target.read_bytes() == b"already here"
    assert server.requests == []


def test_leftovers_of_a_killed_download_are_removed(server, folder, payloads):
    stale = folder / ".drn34.pth.tar.k1ll3d.partial"
    stale.write_bytes(b"half a file")
    other = folder / ".rn34.pth.tar.k1ll3d.partial"
    other.write_bytes(b"another model's download")
    download_model(DRN, str(folder / "drn34.pth.tar"), server.url("drn34.pth.tar"), options=FAST)
    assert listing(folder) == [other.name, "drn34.pth.tar"]


def test_missing_folder_is_created(server, tmp_path, payloads):
    target = tmp_path / "new" / "sub" / "drn34.pth.tar"
    download_model(DRN, str(target), server.url("drn34.pth.tar"), options=FAST)
    assert target.read_bytes() == payloads["drn34.pth.tar"]


def test_body_without_content_length(server, folder, payloads):
    server.then("no_length")
    target = folder / "drn34.pth.tar"
    download_model(DRN, str(target), server.url("drn34.pth.tar"), options=FAST)
    assert target.read_bytes() == payloads["drn34.pth.tar"]
    assert server.requests == [("drn34.pth.tar", "no_length")]


def test_correct_sha256_is_accepted(server, folder, payloads):
    digest = hashlib.sha256(payloads["drn34.pth.tar"]).hexdigest()
    download_model(DRN, str(folder / "drn34.pth.tar"), server.url("drn34.pth.tar"), sha256=digest.upper(), options=FAST)
    assert listing(folder) == ["drn34.pth.tar"]


# -- faults ---------------------------------------------------------------------------------------


def test_404_fails_at_once(server, folder):
    message = fail(server, folder, "404")
    assert "404" in message
    assert server.requests == [("drn34.pth.tar", "404")]


def test_500_then_success_retries(server, folder, payloads):
    server.then("500")
    target = folder / "drn34.pth.tar"
    download_model(DRN, str(target), server.url("drn34.pth.tar"), options=FAST)
    assert target.read_bytes() == payloads["drn34.pth.tar"]
    assert [mode for _, mode in server.requests] == ["500", "ok"]
    assert listing(folder) == ["drn34.pth.tar"]


def test_500_every_time_gives_up_after_the_attempts(server, folder):
    message = fail(server, folder, "500", "500", "500")
    assert "500" in message and "gave up after 3 attempts" in message
    assert len(server.requests) == 3


def test_body_cut_short_is_retried_then_refused(server, folder):
    message = fail(server, folder, "truncated", "truncated", "truncated")
    assert "the body was cut short of the " in message and " bytes announced by Content-Length" in message
    assert [mode for _, mode in server.requests] == ["truncated"] * 3


def test_body_cut_short_once_then_complete(server, folder, payloads):
    server.then("truncated")
    target = folder / "drn34.pth.tar"
    download_model(DRN, str(target), server.url("drn34.pth.tar"), options=FAST)
    assert target.read_bytes() == payloads["drn34.pth.tar"]
    assert listing(folder) == ["drn34.pth.tar"]


def test_html_page_is_refused_without_retry(server, folder):
    message = fail(server, folder, "html")
    assert "web page (text/html)" in message
    assert len(server.requests) == 1


def test_bytes_that_are_no_checkpoint_are_refused(server, folder):
    message = fail(server, folder, "garbage")
    assert "not a usable checkpoint" in message
    assert len(server.requests) == 1


def test_server_too_slow_times_out(server, folder):
    message = fail(server, folder, "slow", "slow", options=DownloadOptions(read_timeout=0.3, attempts=2, backoff=0, progress=False))
    assert "timed out" in message.lower()
    assert "gave up after 2 attempts" in message


def test_nothing_listening_is_a_connection_error(folder):
    with ModelServer({}) as stopped:
        url = stopped.url("drn34.pth.tar")
    with pytest.raises(ModelDownloadError, match="ConnectionError") as caught:
        download_model(DRN, str(folder / "drn34.pth.tar"), url, options=FAST)
    assert SET_DRN in str(caught.value)
    assert listing(folder) == []


def test_wrong_sha256_is_refused(server, folder):
    message = fail(server, folder, sha256="0" * 64)
    assert f"sha256 mismatch: expected {'0' * 64}, got " in message


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


def test_lock_file_is_exclusive_and_removed(tmp_path):
    lock = tmp_path / "x.lock"
    with file_lock(str(lock)):
        assert lock.exists()
        fd = os.open(lock, os.O_RDWR)
        try:
            import fcntl

            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert not lock.exists()


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


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal():
    stream = FakeTerminal()
    progress = _Progress("downloading x", 200, None, stream)
    progress.update(50)
    progress.update(200)
    progress.close()
    assert stream.getvalue() == (
        "\rdownloading x [#######.......................]  25% (0.0 of 0.0 MB)"
        "\rdownloading x [##############################] 100% (0.0 of 0.0 MB)\n"
    )


def test_progress_goes_to_the_log_elsewhere(caplog):
    stream = io.StringIO()
    progress = _Progress("downloading x", 100_000_000, None, stream)
    with caplog.at_level(logging.INFO, logger="bob.learn.pytorch.download"):
        for done in range(0, 100_000_001, 5_000_000):
            progress.update(done)
    progress.close()
    assert stream.getvalue() == ""
    assert [record.getMessage() for record in caplog.records] == [
        f"downloading x: {percent:3d}% ({percent:.1f} of 100.0 MB)" for percent in range(10, 101, 10)
    ]


@pytest.mark.parametrize(
    "kwargs", [{"read_timeout": 0}, {"connect_timeout": -1}, {"attempts": 0}, {"backoff": -1}, {"chunk_size": 0}]
)
def test_download_options_are_checked(kwargs):
    with pytest.raises(ValueError):
        DownloadOptions(**kwargs)


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


def test_a_server_dripping_its_headers_meets_the_deadline(server, folder):
    """The headers come a byte at a time, each within the read timeout: the deadline ends the wait all the same."""
    message = fail(server, folder, "drip_headers", options=bounded(deadline=0.5, min_rate=0, attempts=1))
    assert "did not finish within its deadline of 0.5 s" in message
    assert server.requests == [("drn34.pth.tar", "drip_headers")]


def test_a_body_without_length_cut_by_the_deadline_is_not_taken_as_complete(server, folder):
    """The server stalls within the read timeout; the watchdog's shutdown looks like the end of the body."""
    message = fail(server, folder, "stall_no_length", options=bounded(deadline=0.5, read_timeout=5.0, attempts=1))
    assert "did not finish within its deadline of 0.5 s (1000 bytes received)" in message
    assert "not a usable checkpoint" not in message


def test_the_deadline_covers_the_retries_and_their_waits(server, folder):
    """Server errors retried after waits of 0.4 s, 0.8 s, ...: the deadline of 0.5 s ends it, not the attempts."""
    message = fail(server, folder, *["500"] * 5, options=bounded(deadline=0.5, attempts=5, backoff=0.4))
    assert "did not finish within its deadline of 0.5 s" in message
    assert "gave up" not in message
    assert 1 <= len(server.requests) < 5


def test_a_server_below_the_minimum_rate_is_left(server, folder):
    message = fail(server, folder, "drip", options=bounded(deadline=60, min_rate=1e9, rate_window=0.2))
    assert "below the minimum of 1e+06 kB/s" in message
    assert RATE_HINT in message
    assert len(server.requests) == 1


def test_an_endless_body_stops_at_the_size_cap(server, folder):
    message = fail(server, folder, "endless", options=bounded(max_bytes=1 << 20))
    assert f"the server sent more than {1 << 20} bytes" in message
    assert len(server.requests) == 1


def test_a_compressed_bomb_is_expanded_only_up_to_the_cap(server, folder, monkeypatch):
    """64 MiB of zeros in 64 kB of gzip: never more than a chunk expanded in memory, nor the cap on disk."""
    from bob.learn.pytorch import download

    sizes = []
    pieces = download._Expander.pieces

    def recording(self, data):
        for piece in pieces(self, data):
            sizes.append(len(piece))
            yield piece

    monkeypatch.setattr(download._Expander, "pieces", recording)
    message = fail(server, folder, "gzip_bomb", options=bounded(max_bytes=1 << 20, chunk_size=1 << 16))
    assert f"the server sent more than {1 << 20} bytes" in message
    assert max(sizes) <= 1 << 16 and sum(sizes) <= (1 << 20) + (1 << 16)


def test_a_compressed_model_is_expanded_and_checked(server, folder, payloads):
    """A server that compresses although asked for identity: the expanded bytes are what is written and hashed."""
    server.then("gzip")
    digest = hashlib.sha256(payloads["drn34.pth.tar"]).hexdigest()
    target = folder / "drn34.pth.tar"
    download_model(DRN, str(target), server.url("drn34.pth.tar"), sha256=digest, options=FAST)
    assert target.read_bytes() == payloads["drn34.pth.tar"]


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


def test_the_default_options_bound_every_download():
    options = DownloadOptions()
    assert (options.deadline, options.min_rate, options.rate_window, options.max_bytes) == (3600.0, 20_000.0, 60.0, None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"read_timeout": float("inf")},
        {"connect_timeout": 1e300},
        {"deadline": float("nan")},
        {"deadline": 0},
        {"rate_window": -1},
        {"min_rate": -1},
        {"min_rate": float("inf")},
        {"max_bytes": 0},
    ],
)
def test_durations_that_would_break_the_socket_layer_are_refused(kwargs):
    with pytest.raises(ValueError, match=f"download {next(iter(kwargs))} must be"):
        DownloadOptions(**kwargs)


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


def test_credentials_in_a_malformed_address_are_not_quoted(folder):
    with pytest.raises(ModelDownloadError) as caught:
        download_model(DRN, str(folder / "drn34.pth.tar"), "htp://alice:secret@127.0.0.1/x", options=FAST)
    assert "secret" not in str(caught.value) and "alice" not in str(caught.value)
