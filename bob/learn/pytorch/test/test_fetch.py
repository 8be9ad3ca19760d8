"""The generic fetcher against servers on 127.0.0.1: every bound, check and leftover, locks and proxies."""
import gzip
import hashlib
import io
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
import tracemalloc
from pathlib import Path

import filelock
import pytest

from bob.learn.pytorch import fetch as fetch_module
from bob.learn.pytorch.atomic import temporary_name
from bob.learn.pytorch.fetch import DeadlineError, FetchError, FetchOptions, RateError, fetch, lock_path

from .conftest import listing
from .model_server import ModelServer, fetch_in_process, gzip_bomb

pytestmark = pytest.mark.network

BLOB = random.Random(7).randbytes(200_000)
FAST = FetchOptions(connect_timeout=2.0, read_timeout=1.0, attempts=3, backoff=0.01, progress=False)
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def site():
    """A server on 127.0.0.1 serving ``f.bin`` (:data:`BLOB`), with the fault modes of model_server.py."""
    with ModelServer({"f.bin": BLOB}) as running:
        yield running


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "files"
    path.mkdir()
    return path


def options(**kwargs) -> FetchOptions:
    values = dict(connect_timeout=2.0, read_timeout=2.0, attempts=3, backoff=0.01, progress=False)
    values.update(kwargs)
    return FetchOptions(**values)


def fail(site, folder, *modes, error=FetchError, name="f.bin", opts=FAST, **kwargs) -> str:
    """Fetch in the given fault modes; return the message after checking that nothing is left."""
    site.then(*modes)
    with pytest.raises(error) as caught:
        fetch(site.url(name), str(folder / name), options=opts, **kwargs)
    assert listing(folder) == []
    message = str(caught.value)
    assert message.startswith(f"could not download {site.url(name)}: ")
    return message


# -- success --------------------------------------------------------------------------------------


def test_the_served_bytes_are_written_and_nothing_else(site, folder):
    target = folder / "f.bin"
    assert fetch(site.url("f.bin"), str(target), options=FAST) == str(target)
    assert target.read_bytes() == BLOB
    assert listing(folder) == ["f.bin"]  # no temporary, no lock file
    assert site.requests == [("f.bin", "ok")]


def test_an_existing_file_is_kept_without_a_request(site, folder):
    (folder / "f.bin").write_bytes(b"already here")
    fetch(site.url("f.bin"), str(folder / "f.bin"), options=FAST)
    assert (folder / "f.bin").read_bytes() == b"already here"
    assert site.requests == []


def test_missing_folders_are_made(site, tmp_path):
    target = tmp_path / "new" / "sub" / "f.bin"
    fetch(site.url("f.bin"), str(target), options=FAST)
    assert target.read_bytes() == BLOB


@pytest.mark.parametrize("mode", ["no_length", "trickle", "gzip"])
def test_bodies_without_length_slow_or_compressed_arrive_whole(site, folder, mode):
    site.then(mode)
    digest = hashlib.sha256(BLOB).hexdigest()
    fetch(site.url("f.bin"), str(folder / "f.bin"), sha256=digest.upper(), options=FAST)
    assert (folder / "f.bin").read_bytes() == BLOB
    assert site.requests == [("f.bin", mode)]


def test_the_check_sees_the_complete_file_before_it_is_in_place(site, folder):
    seen = []

    def check(path):
        seen.append((Path(path).parent, Path(path).read_bytes() == BLOB, (folder / "f.bin").exists()))

    fetch(site.url("f.bin"), str(folder / "f.bin"), check=check, options=FAST)
    assert seen == [(folder, True, False)]


# -- refusals -------------------------------------------------------------------------------------


def test_a_check_that_refuses_leaves_nothing(site, folder):
    def check(path):
        raise ValueError("not the file we want")

    message = fail(site, folder, check=check)
    assert message.endswith(": not the file we want")
    assert len(site.requests) == 1


def test_a_wrong_sha256_is_refused(site, folder):
    message = fail(site, folder, sha256="0" * 64)
    assert message.endswith(f": sha256 mismatch: expected {'0' * 64}, got {hashlib.sha256(BLOB).hexdigest()}")


def test_404_fails_at_once(site, folder):
    assert fail(site, folder, "404").endswith(": the server answered 404 Not Found")
    assert site.requests == [("f.bin", "404")]


def test_a_web_page_is_refused_without_retry(site, folder):
    message = fail(site, folder, "html")
    assert message.endswith(": the server sent a web page (text/html) instead of a file; check the address")
    assert len(site.requests) == 1


def test_an_encoding_that_cannot_be_undone_is_refused(site, folder):
    assert fail(site, folder, "unknown_encoding").endswith(": the server sent the file in the encoding 'compress', which cannot be read")


def test_an_address_that_is_not_http_is_refused_before_anything(tmp_path):
    with pytest.raises(FetchError) as caught:
        fetch("htp://alice:secret@127.0.0.1/x", str(tmp_path / "new" / "x"))
    assert str(caught.value) == (
        "could not download htp://***@127.0.0.1/x: the address must start with http:// or https:// and name a host"
    )
    assert not (tmp_path / "new").exists()


# -- retries --------------------------------------------------------------------------------------


def test_a_server_error_is_retried_by_urllib3(site, folder):
    site.then("500")
    fetch(site.url("f.bin"), str(folder / "f.bin"), options=FAST)
    assert [mode for _, mode in site.requests] == ["500", "ok"]
    assert listing(folder) == ["f.bin"]


def test_server_errors_every_time_give_up_after_the_attempts(site, folder):
    message = fail(site, folder, "500", "500", "500")
    assert message.endswith(": the server answered 500 Internal Server Error (gave up after 3 attempts)")
    assert len(site.requests) == 3


def test_a_body_cut_short_is_retried_then_refused(site, folder):
    message = fail(site, folder, "truncated", "truncated", "truncated")
    assert f"the body was cut short of the {len(BLOB)} bytes announced by Content-Length" in message
    assert message.endswith("(gave up after 3 attempts)")
    assert [mode for _, mode in site.requests] == ["truncated"] * 3


def test_a_body_cut_short_once_then_complete(site, folder):
    site.then("truncated")
    fetch(site.url("f.bin"), str(folder / "f.bin"), options=FAST)
    assert (folder / "f.bin").read_bytes() == BLOB


def test_tries_are_shared_between_server_errors_and_cut_bodies(site, folder):
    message = fail(site, folder, "500", "truncated", "500")
    assert message.endswith(": the server answered 500 Internal Server Error (gave up after 3 attempts)")
    assert [mode for _, mode in site.requests] == ["500", "truncated", "500"]


def test_a_server_too_slow_times_out(site, folder):
    message = fail(site, folder, "slow", "slow", opts=options(read_timeout=0.3, attempts=2, backoff=0))
    assert "timed out (connect 2 s, read 0.3 s) after 0 bytes: ConnectionError: " in message
    assert message.endswith("(gave up after 2 attempts)")


def test_nothing_listening_is_a_connection_error(folder):
    with ModelServer({}) as stopped:
        url = stopped.url("f.bin")
    with pytest.raises(FetchError, match=r": ConnectionError: .*Connection refused after 0 bytes \(gave up after 3 attempts\)"):
        fetch(url, str(folder / "f.bin"), options=FAST)
    assert listing(folder) == []


# -- bounds ---------------------------------------------------------------------------------------


def test_a_server_sending_a_byte_at_a_time_meets_the_deadline(site, folder):
    message = fail(site, folder, "drip", error=DeadlineError, opts=options(deadline=0.5, min_rate=0))
    assert "the download did not finish within its deadline of 0.5 s (" in message
    assert message.endswith("; allow more time with a larger FetchOptions.deadline")
    assert site.requests == [("f.bin", "drip")]  # a deadline is not retried


def test_a_server_dripping_its_headers_meets_the_deadline(site, folder):
    message = fail(site, folder, "drip_headers", error=DeadlineError, opts=options(deadline=0.5, min_rate=0))
    assert ": the download did not finish within its deadline of 0.5 s (0 bytes received)" in message
    assert site.requests == [("f.bin", "drip_headers")]


@pytest.mark.parametrize("mode", ["drip", "drip_headers"])
def test_the_deadline_holds_through_a_dripping_proxy(site, folder, monkeypatch, mode):
    """``HTTP_PROXY`` names a proxy that sends its answer a byte at a time (issue 26, class 2)."""
    with ModelServer({"f.bin": BLOB}) as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy.url(""))
        proxy.then(mode)
        message = fail(site, folder, error=DeadlineError, opts=options(deadline=1.0, min_rate=0))
        assert proxy.requests == [("f.bin", mode)]
    assert "the download did not finish within its deadline of 1 s (" in message
    assert site.requests == []


def test_a_body_without_length_cut_by_the_deadline_is_not_taken_as_complete(site, folder):
    opts = options(deadline=0.5, read_timeout=5.0, attempts=1)
    message = fail(site, folder, "stall_no_length", error=DeadlineError, opts=opts)
    assert ": the download did not finish within its deadline of 0.5 s (1000 bytes received); " in message


def test_the_deadline_covers_the_retries_and_their_pauses(site, folder):
    """Pauses of 0, 0.8, 1.6 s between tries cannot fit a deadline of 0.5 s: no try is made past it."""
    message = fail(site, folder, *["500"] * 5, error=DeadlineError, opts=options(deadline=0.5, attempts=5, backoff=0.4))
    assert ": the download did not finish within its deadline of 0.5 s (0 bytes received; no time left to try " in message
    assert "gave up" not in message
    assert len(site.requests) == 2


def test_a_server_below_the_minimum_rate_is_left(site, folder):
    message = fail(site, folder, "drip", error=RateError, opts=options(deadline=60, min_rate=1e9, rate_window=0.2))
    assert " kB/s over 0 s, below the minimum of 1e+06 kB/s (" in message
    assert message.endswith("; accept a slower server with a smaller FetchOptions.min_rate (0 accepts any rate)")
    assert len(site.requests) == 1


@pytest.mark.parametrize("mode", ["endless", "huge_length"])
def test_a_body_beyond_the_cap_is_refused(site, folder, mode):
    message = fail(site, folder, mode, opts=options(max_bytes=1 << 20))
    assert message.endswith(f": the server sent more than {1 << 20} bytes, far more than the file (a body without end, or not a file); refused")
    assert len(site.requests) == 1


def test_a_compressed_bomb_is_never_expanded_whole(site, folder):
    """64 MiB of zeros in 64 kB of gzip: urllib3 expands a chunk at a time, the cap counts expanded bytes."""
    gzip_bomb()  # made by the server before the count starts
    tracemalloc.start()
    try:
        message = fail(site, folder, "gzip_bomb", opts=options(max_bytes=1 << 20, chunk_size=1 << 16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"the server sent more than {1 << 20} bytes" in message
    assert peak < 16 << 20


def test_the_size_cap_counts_the_expanded_bytes(site, folder):
    site.files["zeros.bin"] = bytes(300_000)
    assert len(gzip.compress(bytes(300_000), compresslevel=1)) < 10_000
    message = fail(site, folder, "gzip", name="zeros.bin", opts=options(max_bytes=100_000))
    assert "the server sent more than 100000 bytes" in message


def test_the_default_options_bound_every_download():
    defaults = FetchOptions()
    assert (defaults.deadline, defaults.min_rate, defaults.rate_window, defaults.max_bytes) == (3600.0, 20_000.0, 60.0, None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"read_timeout": float("inf")}, {"connect_timeout": 1e300}, {"deadline": float("nan")}, {"deadline": 0},
        {"rate_window": -1}, {"min_rate": -1}, {"min_rate": float("inf")}, {"max_bytes": 0}, {"attempts": 0},
        {"backoff": -1}, {"chunk_size": 0},
    ],
)
def test_options_that_would_break_the_socket_layer_are_refused(kwargs):
    with pytest.raises(ValueError, match=f"download {next(iter(kwargs))} must be"):
        FetchOptions(**kwargs)


# -- credentials ----------------------------------------------------------------------------------


def test_credentials_never_appear_in_messages_or_logs(site, folder, caplog):
    url = site.url("f.bin").replace("http://", "http://alice:s3cr%40t@")
    site.then("truncated", "404")
    with caplog.at_level(logging.DEBUG, logger="bob.learn.pytorch"):
        with pytest.raises(FetchError) as caught:
            fetch(url, str(folder / "f.bin"), options=FAST)
    message = str(caught.value)
    assert message == f"could not download {site.url('f.bin').replace('http://', 'http://***@')}: the server answered 404 Not Found"
    assert caught.value.__cause__ is None
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "http://***@127.0.0.1" in logged and "retrying" in logged
    assert "alice" not in message + logged and "s3cr" not in message + logged


# -- one download across processes: the lock ------------------------------------------------------


def _start(url, target, deadline=60.0):
    """A process fetching ``url``; returns it and the queue it reports on."""
    ready = SPAWN.Queue()
    process = SPAWN.Process(target=fetch_in_process, args=(url, str(target), deadline, ready))
    process.start()
    return process, ready


def _wait_for_request(site):
    for _ in range(1200):
        if site.requests:
            return
        time.sleep(0.05)
    raise AssertionError("the other process never asked for its file")


def test_a_waiter_behind_a_stopped_holder_gives_up_at_its_deadline(site, folder):
    """The holder is stopped (SIGSTOP) mid-download: the waiter fails at its own deadline, naming the lock."""
    target = folder / "f.bin"
    site.then("drip")
    holder, _ = _start(site.url("f.bin"), target)
    try:
        _wait_for_request(site)
        os.kill(holder.pid, signal.SIGSTOP)
        with pytest.raises(DeadlineError) as caught:
            fetch(site.url("f.bin"), str(target), options=options(deadline=1.0))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=30)
    assert str(caught.value) == (
        f"could not download {site.url('f.bin')}: the download did not finish within its deadline of 1 s: another "
        f"process downloading the same file held {lock_path(str(target))} all that time (a stopped or hung process "
        "holds it until it ends); allow more time with a larger FetchOptions.deadline"
    )
    assert len(site.requests) == 1
    fetch(site.url("f.bin"), str(target), options=FAST)  # the killed holder's temporary file is removed
    assert listing(folder) == ["f.bin"]


def test_a_waiter_has_one_deadline_from_its_call_not_a_new_one_after_the_wait(site, folder):
    """Held 1 s by another, the lock leaves 0.5 s of a 1.5 s deadline: too little for a download of 1 s."""
    target = folder / "f.bin"
    holder = filelock.FileLock(lock_path(str(target)), thread_local=False)
    holder.acquire()
    threading.Timer(1.0, holder.release).start()
    site.then("trickle")  # 20 pieces 50 ms apart
    message = fail(site, folder, error=DeadlineError, opts=options(deadline=1.5, min_rate=0))
    assert ": the download did not finish within its deadline of 1.5 s (" in message
    assert site.requests == [("f.bin", "trickle")]


def test_processes_fetching_the_same_file_download_it_once(site, folder):
    site.then("trickle")
    workers = [_start(site.url("f.bin"), folder / "f.bin") for _ in range(3)]
    answers = [ready.get(timeout=120) for _, ready in workers]
    for process, _ in workers:
        process.join(timeout=30)
    assert answers == [("ok", len(BLOB))] * 3
    assert site.requests == [("f.bin", "trickle")]
    assert listing(folder) == ["f.bin"]


def test_a_download_never_removes_the_temporary_file_of_another_target(site, folder):
    """``net.pth`` beside ``net.pth.v2`` being downloaded by another process (issue 26, class 4)."""
    site.files.update({"net.pth": BLOB[:1000], "net.pth.v2": BLOB})
    site.then("trickle")
    other, ready = _start(site.url("net.pth.v2"), folder / "net.pth.v2")
    try:
        _wait_for_request(site)
        fetch(site.url("net.pth"), str(folder / "net.pth"), options=FAST)
        answer = ready.get(timeout=60)
    finally:
        other.join(timeout=30)
    assert answer == ("ok", len(BLOB))
    assert listing(folder) == ["net.pth", "net.pth.v2"]


def test_only_the_dead_owners_temporaries_of_the_same_target_are_removed(site, folder):
    target = folder / "net.pth"
    alive = os.getppid()

    def left_by(path, pid):
        made = temporary_name(path)
        made = made.with_name(made.name.replace(f".{os.getpid()}.", f".{pid}."))
        made.write_bytes(b"half")
        return made.name

    kept = {left_by(target, alive), left_by(folder / "net.pth.v2", alive), left_by(folder / "net.pth.v2", 999999999)}
    left_by(target, 999999999)
    site.files["net.pth"] = BLOB
    fetch(site.url("net.pth"), str(target), options=FAST)
    assert listing(folder) == sorted(kept | {"net.pth"})


def test_a_temporary_file_removed_by_another_program_is_reported(site, folder):
    def check(path):
        os.unlink(path)

    with pytest.raises(FileNotFoundError) as caught:
        fetch(site.url("f.bin"), str(folder / "f.bin"), check=check, options=FAST)
    assert "was removed by another program before it could be renamed into place; nothing was written, try again" in str(caught.value)
    assert listing(folder) == []


# -- names near the limit -------------------------------------------------------------------------


def test_a_name_of_255_bytes_is_fetched(site, folder):
    name = "é" * 120 + "x" * 11 + ".bin"
    assert len(os.fsencode(name)) == 255
    site.files[name] = BLOB
    fetch(site.url(name), str(folder / name), options=FAST)
    assert listing(folder) == [name]
    assert (folder / name).read_bytes() == BLOB


def test_a_name_too_long_for_the_file_system_is_refused_before_the_request(site, folder):
    name = "x" * 252 + ".bin"
    with pytest.raises(OSError, match="its name is 256 bytes long, longer than the 255 bytes the file system accepts"):
        fetch(site.url(name), str(folder / name), options=FAST)
    assert site.requests == [] and listing(folder) == []


# -- progress -------------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_progress_bar_is_drawn_on_a_terminal(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(fetch_module.sys, "stderr", terminal)
    with fetch_module._progress("downloading x", 200, None) as advance:
        advance(50)
        advance(200)
    assert "downloading x" in terminal.getvalue() and "100%" in terminal.getvalue()


def test_progress_goes_to_the_log_elsewhere(monkeypatch, caplog):
    monkeypatch.setattr(fetch_module.sys, "stderr", io.StringIO())
    with caplog.at_level(logging.INFO, logger="bob.learn.pytorch.fetch"):
        with fetch_module._progress("downloading x", 100_000_000, None) as advance:
            for done in range(0, 100_000_001, 5_000_000):
                advance(done)
    assert fetch_module.sys.stderr.getvalue() == ""
    assert [record.getMessage() for record in caplog.records] == [
        f"downloading x: {percent:3d}% ({percent:.1f} of 100.0 MB)" for percent in range(10, 101, 10)
    ]
