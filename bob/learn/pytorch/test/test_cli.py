"""``bob pytorch``: registration in bob's command, extract-audio, download-models, info and demo."""
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import distribution
from pathlib import Path

import click
import h5py
import numpy
import pytest
import scipy.io.wavfile
import scipy.signal
import torch
from click.testing import CliRunner

from bob.learn.pytorch import export_cache, runtimes
from bob.learn.pytorch.pretrained import PretrainedNetwork
from bob.learn.pytorch import inputs, outputs
from bob.learn.pytorch.script import pytorch as cli
from bob.learn.pytorch.script.pytorch import pytorch

from .conftest import SPEECH, file_behind_link
from .model_server import ModelServer

DRN_PATH_KEY = "bob.learn.pytorch.extractor.audio.drn_modelpath"
DRN_URL_KEY = "bob.learn.pytorch.extractor.audio.drn_url"
GOOD = ["flite_kal_u1.wav", "fest_ked_u2.wav"]
NO_ORT_MESSAGE = 'ONNX Runtime is not installed: pip install "bob.learn.pytorch[fast]"'


def run(*args):
    """Invoke ``bob pytorch ARGS`` in this process (stdout and stderr kept apart)."""
    return CliRunner().invoke(pytorch, [str(arg) for arg in args], catch_exceptions=False)


def run_python_process(command, cwd, env=None):
    """Run ``command`` (a Python program or script) to its end, its output captured as text."""
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def read_wav(path):
    rate, samples = scipy.io.wavfile.read(path)
    return rate, samples


def hdf5_contents(path):
    found = {}
    with h5py.File(path, "r") as hdf5:
        hdf5.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return found


def write_settings(home: Path, values: dict) -> Path:
    """Write bob 12's settings file in the isolated home (nested tables, as ``bob config set`` does)."""
    path = home / ".config" / "bobrc.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tables = {}
    for key, value in values.items():
        table, _, name = key.rpartition(".")
        tables.setdefault(table, []).append(f'{name} = "{value}"')
    lines = [line for table, entries in tables.items() for line in [f"[{table}]"] + entries]
    path.write_text("\n".join(lines) + "\n")
    return path


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def unseen_recording(tmp_path):
    """A recording the package does not ship: 22.05 kHz float32, in a sub-folder."""
    rate, samples = read_wav(SPEECH / "flite_slt_u2.wav")
    resampled = scipy.signal.resample(samples.astype(numpy.float64) / 32768, int(len(samples) * 22050 / rate))
    path = tmp_path / "new" / "talks" / "someone.wav"
    path.parent.mkdir(parents=True)
    scipy.io.wavfile.write(path, 22050, resampled.astype(numpy.float32))
    return path


@pytest.fixture
def loaded_extractors(monkeypatch):
    """The extractors ``bob pytorch`` builds during the test, in order."""
    built = []
    load = cli.load_extractor

    def recording_load(*args, **kwargs):
        extractor = load(*args, **kwargs)
        built.append(extractor)
        return extractor

    monkeypatch.setattr(cli, "load_extractor", recording_load)
    return built


@pytest.fixture
def without_onnxruntime(monkeypatch):
    """Behave as if the ``fast`` extra (onnx and onnxruntime) were not installed."""
    monkeypatch.setattr(runtimes, "onnxruntime_available", lambda: False)


@pytest.fixture
def bad_inputs(tmp_path):
    """Four inputs that cannot be embedded, each for its own reason."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "junk.wav").write_bytes(b"this is no audio")
    scipy.io.wavfile.write(folder / "short.wav", 16000, numpy.zeros(5000, numpy.int16))
    scipy.io.wavfile.write(folder / "stereo.wav", 16000, numpy.ones((16000, 2), numpy.int16))
    return [folder / "missing.wav", folder / "junk.wav", folder / "short.wav", folder / "stereo.wav"]


# -- registration -------------------------------------------------------------------------------


def test_bob_command_of_bob12_lists_and_runs_the_group():
    from bob.cli import bob_main_cli

    listing = CliRunner().invoke(bob_main_cli, ["--help"])
    assert listing.exit_code == 0
    assert "pytorch" in listing.output and "could not load plugin" not in listing.output
    group = CliRunner().invoke(bob_main_cli, ["pytorch", "--help"])
    assert group.exit_code == 0, group.output
    for command in ("extract-audio", "download-models", "info", "demo"):
        assert command in group.output


def test_bob_script_runs_the_group_in_a_new_process(tmp_path):
    script = Path(sys.executable).with_name("bob")
    if not script.is_file():
        pytest.skip("no bob script beside this Python")
    finished = subprocess.run(
        [str(script), "pytorch", "extract-audio", "--help"],
        cwd=tmp_path,  # not the work tree: the package must be found through the installation
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert "--chunk-length" in finished.stdout and "--use-res" in finished.stdout


@pytest.mark.slow
def test_ctrl_c_stops_extract_audio_with_an_error_status_and_no_output(tmp_path, drn_file):
    script = Path(sys.executable).with_name("bob")
    if not script.is_file():
        pytest.skip("no bob script beside this Python")
    rate = 16000  # ten minutes: the run is still embedding when the interrupt comes
    samples = numpy.random.RandomState(0).randint(-3000, 3000, rate * 600, numpy.int16)
    scipy.io.wavfile.write(tmp_path / "long.wav", rate, samples)
    output = tmp_path / "out" / "long.h5"
    command = [str(script), "pytorch", "extract-audio", "long.wav", "-o", str(output), "--model", str(drn_file), "-vv"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in process.stdout:  # bob's INFO lines; the model is loaded just before the first embedding
            seen.append(line)
            if "loaded DltResNet-34" in line:
                break
        assert process.poll() is None, "".join(seen)
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        process.stdout.read()
        status = process.wait(timeout=120)
    finally:
        process.kill()
    assert status == 1, rest  # click's status for an interrupted command, not dask_jobqueue's sys.exit() (0)
    assert "Aborted!" in rest
    assert not output.parent.exists()  # the folder the run created is removed with it


def test_log_messages_are_printed_once_by_the_bob_command(tmp_path, drn_file):
    script = Path(sys.executable).with_name("bob")
    if not script.is_file():
        pytest.skip("no bob script beside this Python")
    command = [script, "pytorch", "extract-audio", SPEECH / GOOD[0], "-o", tmp_path / "x.h5", "--model", drn_file]
    finished = run_python_process([str(part) for part in command + ["-vv"]], tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.count(f"INFO: loaded DltResNet-34 from {drn_file}") == 1, finished.stdout


def test_importing_the_package_keeps_the_ctrl_c_handler_it_found(tmp_path):
    """bob.pipelines' dask_jobqueue swaps SIGINT for sys.exit(); the package's modules put the handler back."""
    program = (
        "import signal\n"
        "def mine(*_): pass\n"
        "signal.signal(signal.SIGINT, mine)\n"
        "import bob.learn.pytorch.preprocessor.audio, bob.learn.pytorch.database, bob.learn.pytorch.extractor\n"
        "import bob.learn.pytorch.transformers\n"
        "assert signal.getsignal(signal.SIGINT) is mine, signal.getsignal(signal.SIGINT)\n"
    )
    finished = run_python_process([sys.executable, "-c", program], tmp_path)
    assert finished.returncode == 0, finished.stderr
    # What bob.pipelines does on its own, which the package undoes:
    unguarded = program.replace("bob.learn.pytorch.preprocessor.audio,", "bob.pipelines,")
    finished = run_python_process([sys.executable, "-c", unguarded], tmp_path)
    assert finished.returncode == 1 and "<lambda>" in finished.stderr


def test_importing_the_package_with_a_damaged_settings_file_names_the_file(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    (config / "bobrc.toml").write_text("[bob.learn.pytorch.extractor.audio\ndrn_modelpath = \n")
    environment = dict(os.environ, XDG_CONFIG_HOME=str(config))
    program = "import bob.learn.pytorch.preprocessor.audio"
    finished = run_python_process([sys.executable, "-c", program], tmp_path, environment)
    assert finished.returncode == 1
    last = finished.stderr.strip().splitlines()[-1]
    error = f"bob.learn.pytorch.errors.SettingsError: the bob settings file {config / 'bobrc.toml'}"
    assert last.startswith(error + " is not valid (")


def test_the_command_group_restores_keyboard_interrupt_on_ctrl_c():
    previous = signal.signal(signal.SIGINT, lambda *_: sys.exit())
    previous_term = signal.getsignal(signal.SIGTERM)
    try:
        result = run("info")
        assert result.exit_code == 0, result.output
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def test_sigterm_during_a_download_exits_143_leaving_no_temporary_or_lock_file(tmp_path, isolated_settings, drn_file):
    script = Path(sys.executable).with_name("bob")
    if not script.is_file():
        pytest.skip("no bob script beside this Python")
    target = tmp_path / "models" / "drn34.pth.tar"
    with ModelServer({"drn.pth.tar": drn_file.read_bytes()}, slow_seconds=120) as server:
        server.then("slow")  # the answer waits: the download is in progress when SIGTERM comes
        write_settings(isolated_settings, {DRN_PATH_KEY: str(target), DRN_URL_KEY: server.url("drn.pth.tar")})
        process = subprocess.Popen(
            [str(script), "pytorch", "download-models", "drn34"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            for _ in range(600):
                if list(target.parent.glob(".drn34.pth.tar.*.partial")) or process.poll() is not None:
                    break
                time.sleep(0.1)
            assert process.poll() is None and (target.parent / "drn34.pth.tar.lock").exists()
            process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 143, errors
    assert errors.strip().endswith("Terminated.")
    assert list(target.parent.iterdir()) == []


def test_entry_points_declare_the_group_and_no_console_script():
    entry_points = distribution("bob.learn.pytorch").entry_points
    (plugin,) = [entry for entry in entry_points if entry.group == "bob.cli"]
    assert (plugin.name, plugin.value) == ("pytorch", "bob.learn.pytorch.script.pytorch:pytorch")
    assert plugin.load() is pytorch
    assert not [entry for entry in entry_points if entry.group in ("console_scripts", "gui_scripts")]


# -- extract-audio --------------------------------------------------------------------------------


def test_extract_audio_hdf5_matches_the_extractor(tmp_path, drn_file, drn_extractor, unseen_recording):
    output = tmp_path / "out" / "embeddings.h5"
    inputs = [SPEECH / name for name in GOOD] + [tmp_path / "new"]
    result = run("extract-audio", *inputs, "-o", output, "--model", drn_file, "--batch-size", 2)
    assert result.exit_code == 0, result.output
    assert "wrote 3 embedding rows of 3 recordings" in result.stdout
    stored = hdf5_contents(output)
    assert sorted(stored) == ["fest_ked_u2", "flite_kal_u1", "talks/someone"]
    for name, path in zip(["flite_kal_u1", "fest_ked_u2", "talks/someone"], inputs[:2] + [unseen_recording]):
        assert stored[name].dtype == numpy.float32 and stored[name].shape == (1, 128)
        numpy.testing.assert_allclose(stored[name], drn_extractor(read_wav(path)), atol=1e-5, rtol=0)
    with h5py.File(output, "r") as hdf5:
        assert hdf5.attrs["model"] == "DltResNet-34"
        assert hdf5.attrs["model_file"] == os.path.abspath(drn_file)
        assert hdf5["talks/someone"].attrs["source"] == str(unseen_recording)
        assert hdf5["talks/someone"].attrs["sample_rate"] == 22050
    assert not list(output.parent.glob("*.partial"))


def test_extract_audio_reads_list_files_relative_to_their_folder(tmp_path, drn_file, drn_extractor):
    listed = tmp_path / "lists" / "sub"
    listed.mkdir(parents=True)
    for name in GOOD:
        (listed / name).write_bytes((SPEECH / name).read_bytes())
    list_file = tmp_path / "lists" / "files.lst"
    list_file.write_text("# my recordings\nsub/flite_kal_u1.wav\n\nsub/fest_ked_u2.wav  # second\n")
    output = tmp_path / "listed.h5"
    result = run("extract-audio", list_file, "-o", output, "--model", drn_file, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    stored = hdf5_contents(output)
    assert sorted(stored) == ["sub/fest_ked_u2", "sub/flite_kal_u1"]
    expected = drn_extractor(read_wav(SPEECH / "fest_ked_u2.wav"))
    numpy.testing.assert_allclose(stored["sub/fest_ked_u2"], expected, atol=1e-5, rtol=0)


def test_bad_inputs_get_one_line_each_and_good_outputs_are_kept(tmp_path, drn_file, drn_extractor, bad_inputs):
    output = tmp_path / "mixed.h5"
    result = run("extract-audio", SPEECH / GOOD[0], *bad_inputs, "-o", output, "--model", drn_file, "-b", 4)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(bad_inputs) + 1
    for line, path, words in zip(
        errors,
        bad_inputs,
        ["no such file", "not a readable wav file", "too short", "channel"],
    ):
        assert line.startswith(f"error: {path}: ")
        assert words in line.lower()
    assert errors[-1] == "Error: 4 of 5 inputs failed (1 written)"
    stored = hdf5_contents(output)
    assert list(stored) == ["flite_kal_u1"]
    numpy.testing.assert_allclose(
        stored["flite_kal_u1"], drn_extractor(read_wav(SPEECH / GOOD[0])), atol=1e-5, rtol=0
    )


def test_a_damaged_wav_header_fails_alone(tmp_path, drn_file):
    damaged = tmp_path / "damaged.wav"
    good = (SPEECH / GOOD[0]).read_bytes()
    damaged.write_bytes(good[:22] + b"\0\0" + good[24:])  # zero channels
    output = tmp_path / "out.h5"
    result = run("extract-audio", SPEECH / GOOD[0], damaged, "-o", output, "--model", drn_file)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[0].startswith(f"error: {damaged}: not a readable WAV file (damaged header")
    assert list(hdf5_contents(output)) == ["flite_kal_u1"]


@pytest.mark.parametrize("suffix", [".h5", ".csv", ".npy"])
def test_a_file_name_that_is_not_utf8_fails_alone(tmp_path, drn_file, suffix):
    folder = os.path.join(os.fsencode(tmp_path), b"wavs")
    os.makedirs(folder)
    shutil.copy(SPEECH / GOOD[0], os.path.join(folder, b"good.wav"))
    shutil.copy(SPEECH / GOOD[1], os.path.join(folder, b"h\xe9l\xe8ne.wav"))  # a Latin-1 name
    output = tmp_path / f"out{suffix}"
    result = run("extract-audio", tmp_path / "wavs", "-o", output, "--model", drn_file)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    bad = os.path.join(folder, b"h\xe9l\xe8ne.wav")
    assert result.stderr.splitlines() == [
        f"error: {bad!r}: the file name is not UTF-8 text: rename it",
        "Error: 1 of 2 inputs failed (1 written)",
    ]
    assert output.is_file()


def test_all_inputs_bad_writes_nothing_and_keeps_the_previous_output(tmp_path, drn_file, bad_inputs):
    output = tmp_path / "previous.h5"
    output.write_bytes(b"previous run")
    result = run("extract-audio", *bad_inputs, "-o", output, "--model", drn_file)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: 4 of 4 inputs failed (nothing written)"
    assert output.read_bytes() == b"previous run"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad", "home", "previous.h5"]


def test_chunked_csv_rows_match_extract_embeddings(tmp_path, drn_file, drn_extractor):
    output = tmp_path / "chunks.csv"
    result = run("extract-audio", SPEECH / "flite_rms_u3.wav", "-o", output, "--model", drn_file, "-L", 100, "-b", 3)
    assert result.exit_code == 0, result.output
    specs = drn_extractor.spectrogram(read_wav(SPEECH / "flite_rms_u3.wav"))
    expected = drn_extractor.extract_embeddings(drn_extractor.network, specs, 100, batch_size=3)
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:5] == ["name", "chunk", "start", "end", "e0"] and len(rows[0]) == 132
    assert [row[:2] for row in rows[1:]] == [["flite_rms_u3", str(i)] for i in range(len(expected))]
    assert len(expected) == 4  # 347 frames: three chunks of 100 and the 47-frame rest (> min_length=30, >= 37)
    # a chunk of frames [a, b) covers the samples from frame a's start (10 ms hops) to frame b - 1's 25 ms window's end
    rate, samples = read_wav(SPEECH / "flite_rms_u3.wav")
    ends = [1.015, 2.015, 3.015, min(3.485, len(samples) / rate)]
    assert [row[2:4] for row in rows[1:]] == [[f"{i:.6f}", f"{end:.6f}"] for i, end in enumerate(ends)]
    numpy.testing.assert_allclose(numpy.array([row[4:] for row in rows[1:]], float), expected, atol=1e-5, rtol=0)


def test_npy_output_is_one_record_array_with_resnet(tmp_path, rn_file, rn_extractor):
    output = tmp_path / "rows.npy"
    recordings = [SPEECH / name for name in GOOD]
    result = run("extract-audio", *recordings, "-o", output, "--model", rn_file, "--use-res")
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["home", "rows.npy"]
    stored = numpy.load(output, allow_pickle=False)
    assert stored.dtype.names == ("name", "chunk", "source", "start", "end", "label", "embedding") and stored.shape == (2,)
    assert stored["embedding"].shape == (2, 128) and stored["embedding"].dtype == numpy.float32
    expected = numpy.vstack([rn_extractor(read_wav(path)) for path in recordings])
    numpy.testing.assert_allclose(stored["embedding"], expected, atol=1e-5, rtol=0)
    assert stored["name"].tolist() == ["flite_kal_u1", "fest_ked_u2"] and stored["chunk"].tolist() == [0, 0]
    assert stored["source"].tolist() == [str(path) for path in recordings]
    rows, labels = outputs.read_npy_output(output)
    numpy.testing.assert_array_equal(rows, stored["embedding"])
    assert labels["name"].tolist() == ["flite_kal_u1", "fest_ked_u2"]


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["-L", "10"], "37 frames"),
        (["-o", "OUT/out.txt"], "cannot tell the output format"),
        (["--batch-size", "0"], "batch-size"),
        (["--device", "no-such-device"], "--device"),
    ],
)
def test_usage_errors_exit_2_naming_the_problem(tmp_path, drn_file, arguments, words):
    folder = tmp_path / "out"
    arguments = [argument.replace("OUT", str(folder)) for argument in arguments]
    output = ["-o", folder / "x.h5"] if "-o" not in arguments else []
    result = run("extract-audio", SPEECH / GOOD[0], "--model", drn_file, *output, *arguments)
    assert result.exit_code == 2
    assert words in result.stderr
    assert not folder.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")
def test_cuda_device_without_cuda_is_one_line_about_the_device_not_the_file(tmp_path, drn_file):
    output = tmp_path / "out" / "x.h5"
    result = run("extract-audio", SPEECH / GOOD[0], "--model", drn_file, "-o", output, "--device", "cuda")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: cannot load the model on device 'cuda': device 'cuda' asked for, but PyTorch finds no CUDA device"
    )
    assert "checkpoint" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert not output.parent.exists() or not list(output.parent.iterdir())


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "mnn"])
def test_backend_option_reaches_the_extractor_and_keeps_the_embeddings(
    tmp_path, drn_file, drn_extractor, loaded_extractors, backend
):
    if runtimes.missing_runtime(backend):
        pytest.skip(runtimes.missing_runtime(backend))
    output = tmp_path / f"{backend}.h5"
    inputs = [SPEECH / name for name in GOOD]
    result = run("extract-audio", *inputs, "-o", output, "--model", drn_file, "--backend", backend, "-q")
    assert result.exit_code == 0, result.output
    (extractor,) = loaded_extractors
    assert extractor.backend == backend and extractor.runtime == backend
    stored = hdf5_contents(output)
    assert drn_extractor.backend == "auto"
    for name, path in zip(["flite_kal_u1", "fest_ked_u2"], inputs):
        numpy.testing.assert_allclose(stored[name], drn_extractor(read_wav(path)), atol=1e-5, rtol=0)


def test_backend_defaults_to_auto(tmp_path, drn_file, loaded_extractors):
    result = run("extract-audio", SPEECH / GOOD[0], "-o", tmp_path / "auto.h5", "--model", drn_file, "-q")
    assert result.exit_code == 0, result.output
    (extractor,) = loaded_extractors
    assert extractor.backend == "auto"
    assert extractor.runtime == ("onnxruntime" if runtimes.onnxruntime_available() else "eager")


def test_an_unknown_backend_is_refused_by_click(tmp_path, drn_file, loaded_extractors):
    output = tmp_path / "out" / "x.h5"
    result = run("extract-audio", SPEECH / GOOD[0], "-o", output, "--model", drn_file, "--backend", "fastest")
    assert result.exit_code == 2
    assert (
        "Invalid value for '--backend': 'fastest' is not one of 'auto', 'onnxruntime', 'mnn', 'eager'"
        in result.stderr
    )
    assert not loaded_extractors and not output.parent.exists()


def test_explicit_onnxruntime_without_it_stops_with_the_install_hint(
    tmp_path, drn_file, loaded_extractors, without_onnxruntime
):
    output = tmp_path / "out" / "x.h5"
    result = run("extract-audio", SPEECH / GOOD[0], "-o", output, "--model", drn_file, "--backend", "onnxruntime")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.strip() == f"Error: {NO_ORT_MESSAGE}"
    assert not loaded_extractors and not output.parent.exists()


def test_load_extractor_turns_a_missing_onnxruntime_into_a_click_error(drn_file, without_onnxruntime):
    with pytest.raises(click.ClickException, match=re.escape(NO_ORT_MESSAGE)):
        cli.load_extractor(str(drn_file), "dltresnet34", backend="onnxruntime")


def test_auto_without_onnxruntime_runs_eagerly(
    tmp_path, drn_file, drn_extractor, loaded_extractors, without_onnxruntime
):
    output = tmp_path / "auto.h5"
    result = run("extract-audio", SPEECH / GOOD[0], "-o", output, "--model", drn_file)
    assert result.exit_code == 0, result.output
    (extractor,) = loaded_extractors
    assert extractor.runtime == "eager"
    expected = drn_extractor(read_wav(SPEECH / GOOD[0]))
    numpy.testing.assert_allclose(hdf5_contents(output)["flite_kal_u1"], expected, atol=1e-5, rtol=0)


def test_two_recordings_with_one_name_are_refused_before_any_work(tmp_path, drn_file):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.wav").write_bytes((SPEECH / GOOD[0]).read_bytes())
    result = run("extract-audio", tmp_path / "a" / "same.wav", tmp_path / "b" / "same.wav", "-o", tmp_path / "o.h5")
    assert result.exit_code == 2
    assert "both be stored as 'same'" in result.stderr
    assert not (tmp_path / "o.h5").exists()


def test_an_output_folder_that_cannot_be_made_stops_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run("extract-audio", SPEECH / GOOD[0], "-o", blocker / "out.h5", "--model", tmp_path / "none")
    assert result.exit_code == 2  # --model must exist: click checks it first
    result = run("extract-audio", SPEECH / GOOD[0], "-o", blocker / "out.h5")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: cannot write {blocker / 'out.h5'}: {blocker} is a file, not a folder"


def test_a_bad_model_file_stops_with_one_line(tmp_path):
    model = tmp_path / "model.pth.tar"
    model.write_bytes(b"not a checkpoint")
    result = run("extract-audio", SPEECH / GOOD[0], "-o", tmp_path / "o.h5", "--model", model)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and str(model) in line
    assert not (tmp_path / "o.h5").exists()


class _CodeRunningPayload:
    def __reduce__(self):
        return (print, ("payload ran",))


def test_an_unsafe_model_file_names_the_command_line_option(tmp_path, capsys):
    model = tmp_path / "model.pth.tar"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _CodeRunningPayload()}, model)
    result = run("extract-audio", SPEECH / GOOD[0], "-o", tmp_path / "o.h5", "--model", model)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: refusing to load {model}: it contains print, ")
    assert line.endswith("If you trust this file, pass --trust-checkpoint; otherwise obtain a clean checkpoint.")
    assert "payload ran" not in result.output + capsys.readouterr().out


# -- without a model and without network ---------------------------------------------------------


@pytest.fixture
def unreachable_model(isolated_settings, tmp_path):
    """Settings sending the DltResNet model to a missing file and its download to a closed local port."""
    target = tmp_path / "models" / "drn34.pth.tar"
    write_settings(
        isolated_settings,
        {
            DRN_PATH_KEY: str(target),
            DRN_URL_KEY: f"http://127.0.0.1:{closed_port()}/drn34.pth.tar",
            "bob.learn.pytorch.extractor.audio.download_timeout": "5",
        },
    )
    return target


@pytest.mark.network
@pytest.mark.parametrize("command", [["demo", "-o", "demo"], ["download-models", "drn34"]])
def test_without_model_and_network_the_download_message_ends_the_command(tmp_path, unreachable_model, command):
    result = run(*command)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    message = result.stderr.strip().splitlines()[0]
    assert "could not download the DltResNet-34 model" in message
    assert f"bob config set {DRN_PATH_KEY}" in message
    assert not unreachable_model.parent.exists() or not list(unreachable_model.parent.iterdir())
    assert not (tmp_path / "demo").exists()


# -- info and download-models ---------------------------------------------------------------------


def test_info_shows_paths_sources_and_keys(isolated_settings, drn_file):
    settings_file = write_settings(isolated_settings, {DRN_PATH_KEY: str(drn_file)})
    result = run("info")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"model file:   {drn_file} [present]" in text
    assert f"from:       setting {DRN_PATH_KEY} in {settings_file}" in text
    assert f"{DRN_PATH_KEY} = '{drn_file}'  ({settings_file})" in text
    for key in ("rn_modelpath", "rn_url", "drn_url", "drn_sha256", "download_timeout"):
        assert f"bob.learn.pytorch.extractor.audio.{key}" in text
    assert "https://www.idiap.ch/" in text and "package data folder" in text


def test_info_tells_a_folder_set_as_model_file_from_a_missing_file(isolated_settings, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    write_settings(isolated_settings, {DRN_PATH_KEY: str(folder)})
    result = run("info")
    assert result.exit_code == 0, result.output
    assert f"model file:   {folder} [a folder, not a file: point the setting to the model file]" in result.stdout
    assert "[missing: downloaded on first use]" in result.stdout  # the ResNet-34's file, not set


def backend_section(text):
    """The lines of ``info``'s last section, the one on network backends."""
    section = text.strip().split("\n\n")[-1].splitlines()
    assert section[0].startswith("network runtimes (extract-audio --backend")
    return section[1:]


@pytest.fixture
def no_network_built(monkeypatch):
    """Any attempt to build a network or a frame runner fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("info must not build a network")

    monkeypatch.setattr(PretrainedNetwork, "build", refuse)
    monkeypatch.setattr(runtimes, "build_runtime", refuse)


MNN_MESSAGE = 'MNN is not installed: pip install "bob.learn.pytorch[mnn]"'


@pytest.mark.parametrize("with_mnn", [True, False])
def test_info_shows_the_runtimes_with_the_fast_extra(monkeypatch, no_network_built, with_mnn):
    monkeypatch.setattr(runtimes, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(runtimes, "mnn_available", lambda: with_mnn)
    result = run("info")
    assert result.exit_code == 0, result.output
    assert backend_section(result.stdout) == [
        f"  available:    onnxruntime, {'mnn, ' if with_mnn else ''}eager",
        "  auto uses:    onnxruntime (eager if it fails its check against eager)",
        f"  because:      {runtimes.AUTO_BY_HOST[runtimes.host_kind()][1]}",
    ] + ([] if with_mnn else [f"  missing:      {MNN_MESSAGE}"])


def test_info_shows_the_runtimes_and_the_install_hint_without_onnxruntime(without_onnxruntime, no_network_built):
    result = run("info")
    assert result.exit_code == 0, result.output
    assert backend_section(result.stdout) == [
        "  available:    eager",
        "  auto uses:    eager",
        f"  missing:      {NO_ORT_MESSAGE}",
        f"  missing:      {MNN_MESSAGE}",
    ]


def test_download_models_keeps_a_present_file_without_network(isolated_settings, drn_file, monkeypatch):
    monkeypatch.setenv(export_cache.CACHE_ENVIRONMENT, "off")  # nothing but the model file (the cache: below)
    write_settings(isolated_settings, {DRN_PATH_KEY: str(drn_file), DRN_URL_KEY: "http://127.0.0.1:9/never"})
    before = drn_file.stat().st_mtime_ns
    result = run("download-models", "drn34")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"DltResNet-34: {drn_file}\n"
    assert drn_file.stat().st_mtime_ns == before


# -- demo -------------------------------------------------------------------------------------------


def test_demo_prints_and_writes_the_similarity_matrix(tmp_path, drn_file, drn_extractor):
    output = tmp_path / "demo"
    result = run("demo", "--model", drn_file, "-o", output)
    assert result.exit_code == 0, result.output
    with open(SPEECH / "speakers.csv", newline="") as handle:
        speakers = [(row["file"][:-4], row["speaker"]) for row in csv.DictReader(handle)]
    assert len(speakers) == 17
    for name, speaker in speakers:
        assert f"{name:<16} {speaker}" in result.stdout
    assert "cosine similarity:" in result.stdout and "same speaker" in result.stdout
    embeddings = hdf5_contents(output / "embeddings.h5")
    assert sorted(embeddings) == sorted(name for name, _ in speakers)
    for name, _ in speakers[::7]:  # a few rows against the extractor itself
        numpy.testing.assert_allclose(
            embeddings[name], drn_extractor(read_wav(SPEECH / f"{name}.wav")), atol=1e-5, rtol=0
        )
    expected = numpy.vstack([embeddings[name] for name, _ in speakers]).astype(float)
    with open(output / "similarity.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["file", "speaker"] + [name for name, _ in speakers]
    assert [tuple(row[:2]) for row in table[1:]] == speakers
    matrix = numpy.array([row[2:] for row in table[1:]], dtype=float)
    norms = numpy.linalg.norm(expected, axis=1)
    numpy.testing.assert_allclose(matrix, expected @ expected.T / numpy.outer(norms, norms), atol=2e-6, rtol=0)
    numpy.testing.assert_allclose(numpy.diag(matrix), 1.0, atol=2e-6)


# -- networks by name, and export --------------------------------------------------------------------


def test_network_option_chooses_the_registered_network(tmp_path, rn_file, rn_extractor):
    by_name, by_alias = tmp_path / "name.h5", tmp_path / "alias.h5"
    assert run("extract-audio", SPEECH / GOOD[0], "-o", by_name, "--model", rn_file, "--network", "resnet34").exit_code == 0
    assert run("extract-audio", SPEECH / GOOD[0], "-o", by_alias, "--model", rn_file, "--use-res").exit_code == 0
    expected = rn_extractor(read_wav(SPEECH / GOOD[0]))
    for output in (by_name, by_alias):
        numpy.testing.assert_allclose(hdf5_contents(output)["flite_kal_u1"], expected, atol=1e-5, rtol=0)
    with h5py.File(by_name, "r") as hdf5:
        assert hdf5.attrs["network"] == "resnet34" and hdf5.attrs["model"] == "ResNet-34"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--network", "vgg"], "'vgg' is not a registered network; choose one of dltresnet34, resnet34"),
        (["--use-res", "--network", "dltresnet34"], "--use-res means --network resnet34, which conflicts"),
        (["-L", "20"], "20 frames is shorter than the 37 frames the network needs"),
    ],
)
def test_network_usage_errors_exit_2_before_any_work(tmp_path, drn_file, loaded_extractors, arguments, message):
    output = tmp_path / "out" / "x.h5"
    result = run("extract-audio", SPEECH / GOOD[0], "-o", output, "--model", drn_file, *arguments)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert not loaded_extractors and not output.parent.exists()


EXPORTED_RUNNER = """
import sys
import numpy, onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
(embedding,) = session.run(["embedding"], {"spectrogram": numpy.load(sys.argv[2])})
numpy.save(sys.argv[3], embedding)
assert not [name for name in sys.modules if name.startswith("bob")], "the package was imported"
"""


@pytest.mark.skipif(not runtimes.onnxruntime_available(), reason='needs ".[fast]"')
@pytest.mark.parametrize("network, fixture", [("dltresnet34", "drn"), ("rn34", "rn")])
def test_export_writes_onnx_that_onnxruntime_alone_runs_with_the_extractors_numbers(
    tmp_path, request, extractors, network, fixture
):
    from bob.learn.pytorch.embedding import standardized_batch

    model_file = request.getfixturevalue(f"{fixture}_file")
    extractor = extractors[fixture]
    output = tmp_path / "exported" / "net.onnx"
    result = run("export", network, "-o", output, "--model", model_file)
    assert result.exit_code == 0, result.output
    title = extractor.pretrained.title
    assert result.stdout.startswith(
        f"wrote {output}: {title}, input 'spectrogram' (batch, 1, time, 257) -> output 'embedding' (batch, 128); "
    )
    assert sorted(path.name for path in output.parent.iterdir()) == ["net.onnx"]
    audios = [read_wav(SPEECH / f"{name}.wav") for name in ("flite_kal_u1", "librivox_0930")]
    for index, audio in enumerate(audios):  # two lengths: the time axis is free
        spectrogram_file, embedding_file = tmp_path / f"in{index}.npy", tmp_path / f"out{index}.npy"
        numpy.save(spectrogram_file, standardized_batch([extractor.spectrogram(audio)]))
        done = subprocess.run(
            [sys.executable, "-c", EXPORTED_RUNNER, str(output), str(spectrogram_file), str(embedding_file)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        numpy.testing.assert_allclose(numpy.load(embedding_file), extractor(audio), atol=1e-4, rtol=0)


def test_export_needs_onnxruntime_and_writes_nothing_without_it(tmp_path, drn_file, without_onnxruntime):
    output = tmp_path / "net.onnx"
    result = run("export", "dltresnet34", "-o", output, "--model", drn_file)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {NO_ORT_MESSAGE}"
    assert not output.exists()


def test_export_refuses_an_unknown_network(tmp_path):
    result = run("export", "vgg16", "-o", tmp_path / "net.onnx")
    assert result.exit_code == 2
    assert "'vgg16' is not a registered network" in result.stderr


@pytest.mark.skipif(not runtimes.onnxruntime_available(), reason='needs ".[fast]"')
def test_a_named_runtime_that_fails_its_check_is_named_not_blamed_on_the_device(tmp_path, drn_file, monkeypatch):
    monkeypatch.setattr(runtimes, "probe_errors", lambda network, runtime, bins, shape=None: (1e-2, 0.3))
    result = run("extract-audio", SPEECH / GOOD[0], "-o", tmp_path / "x.h5", "--model", drn_file, "--backend", "onnxruntime")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --backend onnxruntime: ONNX Runtime's network differs from the eager one")
    assert "device" not in result.stderr and not (tmp_path / "x.h5").exists()


# -- a run never loses its work at the end (issue 19, group 3) ------------------------------------


@pytest.fixture
def no_embedding(monkeypatch):
    """Fail the test if any recording is embedded."""
    monkeypatch.setattr(cli, "embed_inputs", lambda *args, **kwargs: pytest.fail("nothing may be embedded"))


def test_a_name_that_is_also_a_group_is_refused_before_any_work(tmp_path, monkeypatch):
    recordings = tmp_path / "rec"
    (recordings / "sub").mkdir(parents=True)
    shutil.copy(SPEECH / GOOD[0], recordings / "sub.wav")
    shutil.copy(SPEECH / GOOD[1], recordings / "sub" / "x.wav")
    monkeypatch.setattr(cli, "load_extractor", lambda *args: pytest.fail("the model must not be loaded"))
    result = run("extract-audio", recordings, "-o", tmp_path / "out" / "o.h5")
    assert result.exit_code == 2
    assert f"'sub' would be both a recording and a group of recordings in {tmp_path / 'out' / 'o.h5'}" in result.stderr
    assert f"{recordings / 'sub.wav'} and {recordings / 'sub' / 'x.wav'}" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_same_names_are_fine_in_a_csv(tmp_path, drn_file):
    recordings = tmp_path / "rec"
    (recordings / "sub").mkdir(parents=True)
    shutil.copy(SPEECH / GOOD[0], recordings / "sub.wav")
    shutil.copy(SPEECH / GOOD[1], recordings / "sub" / "x.wav")
    result = run("extract-audio", recordings, "-o", tmp_path / "o.csv", "--model", drn_file)
    assert result.exit_code == 0, result.stderr
    names = [row[0] for row in csv.reader((tmp_path / "o.csv").open())][1:]
    assert sorted(names) == ["sub", "sub/x"]


def test_a_folder_whose_name_is_not_utf8_fails_alone_before_any_work(tmp_path, drn_file):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    shutil.copy(SPEECH / GOOD[0], folder / "a.wav")
    result = run("extract-audio", folder / "a.wav", SPEECH / GOOD[1], "-o", tmp_path / "o.h5", "--model", drn_file)
    assert result.exit_code == 1
    assert "a folder of its path is not UTF-8 text: rename the folder" in result.stderr
    assert list(hdf5_contents(tmp_path / "o.h5")) == [Path(GOOD[1]).stem]


def test_a_model_path_the_output_cannot_hold_stops_before_any_work(tmp_path, drn_file, no_embedding):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/mod\xe8les"))
    folder.mkdir()
    model = folder / "drn34.pth.tar"
    shutil.copy(drn_file, model)
    result = run("extract-audio", SPEECH / GOOD[0], "-o", tmp_path / "out" / "o.h5", "--model", model)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot write {tmp_path / 'out' / 'o.h5'}: ")
    assert result.stderr.strip().endswith("(nothing was embedded)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".h5", ".npy"])
def test_an_output_that_is_a_fifo_is_refused_before_any_work(tmp_path, suffix, monkeypatch):
    target = tmp_path / f"o{suffix}"
    os.mkfifo(target)
    monkeypatch.setattr(cli, "load_extractor", lambda *args: pytest.fail("the model must not be loaded"))
    result = run("extract-audio", SPEECH / GOOD[0], "-o", target)
    assert result.exit_code == 1
    assert "is not a regular file (a FIFO (named pipe))" in result.stderr


def test_replacing_an_output_keeps_its_permission_bits_and_its_link(tmp_path, drn_file):
    real, link = file_behind_link(tmp_path, "o.h5", "previous run", 0o600)
    result = run("extract-audio", SPEECH / GOOD[0], "-o", link, "--model", drn_file)
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and list(hdf5_contents(real)) == [Path(GOOD[0]).stem]
    assert oct(real.stat().st_mode & 0o777) == oct(0o600)
    assert sorted(path.name for path in real.parent.iterdir()) == ["o.h5"]


def test_a_failed_run_leaves_no_folder_it_made(tmp_path, drn_file, bad_inputs):
    output = tmp_path / "new" / "deeper" / "o.h5"
    result = run("extract-audio", *bad_inputs, "-o", output, "--model", drn_file)
    assert result.exit_code == 1 and "nothing written" in result.stderr
    assert not (tmp_path / "new").exists()


def test_a_failed_run_keeps_a_folder_that_was_there(tmp_path, drn_file, bad_inputs):
    (tmp_path / "there").mkdir()
    result = run("extract-audio", *bad_inputs, "-o", tmp_path / "there" / "o.h5", "--model", drn_file)
    assert result.exit_code == 1
    assert (tmp_path / "there").is_dir()


@pytest.mark.parametrize(
    "device, status, message",
    [
        ("cpu:1", 2, "the CPU has no index other than 0"),
        ("meta", 2, "holds no data and cannot compute embeddings"),
        ("mps", 1, "Error: cannot load the model on device 'mps': device 'mps' asked for, but PyTorch finds no Apple GPU"),
    ],
)
def test_devices_the_machine_cannot_use_are_named_before_any_work(tmp_path, drn_file, device, status, message):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("an Apple GPU is there")
    result = run("extract-audio", SPEECH / GOOD[0], "-o", tmp_path / "out" / "o.h5", "--model", drn_file, "-d", device)
    assert result.exit_code == status
    assert message in result.stderr and "checkpoint" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_stale_temporary_outputs_of_a_killed_run_are_removed(tmp_path, drn_file):
    from bob.learn.pytorch.atomic import temporary_name

    output = tmp_path / "o.h5"
    stale = temporary_name(output)
    stale = stale.with_name(stale.name.replace(f".{os.getpid()}.", ".999999999."))
    stale.write_bytes(b"half an output")
    result = run("extract-audio", SPEECH / GOOD[0], "-o", output, "--model", drn_file)
    assert result.exit_code == 0, result.stderr
    assert not stale.exists() and output.exists()


def test_info_never_shows_the_credentials_of_an_address(isolated_settings):
    write_settings(isolated_settings, {DRN_URL_KEY: "https://alice:s3cret@mirror.example/drn.pth.tar"})
    result = run("info")
    assert result.exit_code == 0, result.stderr
    assert "https://***@mirror.example/drn.pth.tar" in result.stdout
    assert "alice" not in result.stdout and "s3cret" not in result.stdout


# -- the runtime cache and export's edges -----------------------------------------------------------

needs_onnxruntime = pytest.mark.skipif(not runtimes.onnxruntime_available(), reason='needs ".[fast]"')


def cache_section(text):
    """The lines of ``info``'s section on the runtime cache."""
    section = next(part for part in text.strip().split("\n\n") if part.startswith("runtime cache"))
    return section.splitlines()[1:]


def test_info_shows_where_the_runtime_cache_is_and_what_it_holds(isolated_settings, no_network_built):
    folder = isolated_settings / ".cache" / "bob.learn.pytorch" / "frame-body"
    assert cache_section(run("info").stdout) == [
        f"  folder:       {folder}",
        "    from:       default ($XDG_CACHE_HOME, else ~/.cache)",
        "  holds:        0 entries, 0.0 MiB",
    ]
    folder.mkdir(parents=True)
    for name in ("a" * 32, "b" * 32):
        (folder / f"{name}.onnx").write_bytes(bytes(3 * 2**20))
        (folder / f"{name}.json").write_bytes(bytes(2**19))
    (folder / f"{'c' * 32}.onnx").write_bytes(bytes(2**20))  # no index: not an entry
    assert cache_section(run("info").stdout)[2] == "  holds:        2 entries, 7.0 MiB"
    settings_file = write_settings(isolated_settings, {export_cache.CACHE_SETTING: "off"})
    text = run("info").stdout
    assert cache_section(text) == ["  folder:       off", f"    from:       setting {export_cache.CACHE_SETTING} in {settings_file}"]
    assert f"{export_cache.CACHE_SETTING} = 'off'  ({settings_file})" in text


def test_a_wrong_cache_setting_is_one_line(isolated_settings, tmp_path):
    write_settings(isolated_settings, {export_cache.CACHE_SETTING: "relative/cache"})
    for command in (["info"], ["cache", "clear"], ["download-models", "drn34"]):
        result = run(*command)
        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: setting {export_cache.CACHE_SETTING} in {isolated_settings / '.config' / 'bobrc.toml'} must be an "
            "absolute folder or 'off', got 'relative/cache'\n"
        )


def test_cache_clear_removes_the_entries_only(isolated_settings, monkeypatch):
    folder = isolated_settings / ".cache" / "bob.learn.pytorch" / "frame-body"
    folder.mkdir(parents=True)
    (folder / f"{'a' * 32}.onnx").write_bytes(b"model")
    (folder / f"{'a' * 32}.json").write_text("{}")
    (folder / "mine.txt").write_text("kept")
    result = run("cache", "clear")
    assert (result.exit_code, result.stdout) == (0, f"removed 2 files from {folder}\n")
    assert sorted(path.name for path in folder.iterdir()) == ["mine.txt"]
    monkeypatch.setenv(export_cache.CACHE_ENVIRONMENT, "off")
    result = run("cache", "clear")
    assert result.stdout == "the runtime cache is off (environment variable BOB_LEARN_PYTORCH_RUNTIME_CACHE): nothing to remove\n"


@needs_onnxruntime
def test_download_models_fills_the_runtime_cache_and_later_commands_skip_the_export(isolated_settings, drn_file, tmp_path, monkeypatch):
    write_settings(isolated_settings, {DRN_PATH_KEY: str(drn_file), DRN_URL_KEY: "http://127.0.0.1:9/never"})
    folder = isolated_settings / ".cache" / "bob.learn.pytorch" / "frame-body"
    result = run("download-models", "drn34")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"DltResNet-34: {drn_file}\n  runtime: onnxruntime, checked against eager and kept in {folder}\n"
    )
    assert export_cache.contents().entries == 1

    def no_export(*args):
        raise AssertionError("the frame body must come from the cache")

    monkeypatch.setattr(runtimes, "export_frame_body", no_export)
    output = tmp_path / "e.h5"
    result = run("extract-audio", SPEECH / GOOD[0], "-o", output, "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    assert export_cache.contents().entries == 1 and output.is_file()


def _hard_link(model, folder):
    link = folder / "hard.pth.tar"
    os.link(model, link)
    return link


def _symbolic_link(model, folder):
    link = folder / "soft.pth.tar"
    link.symlink_to(model)
    return link


@pytest.mark.parametrize(
    "output_of",
    [
        pytest.param(lambda model, folder: model, id="the same path"),
        pytest.param(lambda model, folder: Path(os.path.relpath(model)), id="a relative path"),
        pytest.param(_symbolic_link, id="a symbolic link"),
        pytest.param(_hard_link, id="a hard link"),
    ],
)
def test_export_refuses_to_write_onto_the_model_it_reads_before_any_work(tmp_path, drn_file, output_of, monkeypatch):
    model = tmp_path / "models" / "m.pth.tar"
    model.parent.mkdir()
    shutil.copyfile(drn_file, model)
    output = output_of(model, model.parent)
    monkeypatch.setattr(cli, "load_extractor", lambda *args, **kwargs: pytest.fail("the model must not be loaded"))
    result = run("export", "dltresnet34", "--model", output if output_of is _symbolic_link else model, "-o", output)
    assert result.exit_code == 2
    assert f"Invalid value for '--output' / '-o': {output} is the model file the network is read from" in result.stderr
    assert "write the ONNX model to another file" in result.stderr
    assert model.read_bytes() == drn_file.read_bytes()


def test_export_refuses_to_write_onto_the_model_its_setting_names(isolated_settings, drn_file, tmp_path):
    model = tmp_path / "m.pth.tar"
    shutil.copyfile(drn_file, model)
    write_settings(isolated_settings, {DRN_PATH_KEY: str(model)})
    result = run("export", "dltresnet34", "-o", model)
    assert result.exit_code == 2 and "is the model file the network is read from" in result.stderr
    assert model.read_bytes() == drn_file.read_bytes()


@needs_onnxruntime
def test_a_network_torch_export_cannot_trace_is_one_line(untraceable, rn_file, tmp_path):
    output = tmp_path / "u.onnx"
    result = run("export", "untraceable", "-o", output, "--model", rn_file)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: cannot export Untraceable ResNet-34: torch.export cannot trace the network UntraceableResNet (")
    assert lines[0].endswith("); nothing written ('extract-audio --backend eager' still embeds with it)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["home"]  # no model, no temporary
    result = run("extract-audio", SPEECH / GOOD[0], "-o", output.with_suffix(".h5"), "-n", "untraceable", "--model", rn_file, "--backend", "onnxruntime")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --backend onnxruntime: ONNX Runtime could not run the network (ExportError: torch.export cannot")
    assert result.stderr.endswith("); use backend 'auto' or 'eager'\n") and result.stderr.count("\n") == 1, result.stderr
