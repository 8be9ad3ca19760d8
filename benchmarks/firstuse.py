#!/usr/bin/env python3
"""First use: a one-off ``bob pytorch extract-audio`` on one recording against a 2019-style script, as ratios.

Usage (from the repository root)::

    .venv/bin/python benchmarks/firstuse.py [--pairs 5] [--seconds 3] [--network dltresnet34] [--model FILE]

Each round runs, each in a fresh process and in a rotated order, a script
doing what the 2019 package did (import torch, build the network, load its
state dict, compute the spectrogram, one eager forward) and each variant of
``bob pytorch extract-audio ONE.wav -o OUT.h5``:

- ``eager``: ``--backend eager``;
- ``auto-warm``: ``--backend auto`` with the runtime cache holding the network's
  frame body (filled once before the rounds);
- ``auto-cold``: ``--backend auto`` with an empty runtime cache (the process
  exports, checks and writes the entry);
- ``cli-import``: ``bob pytorch extract-audio --help``, the floor of any
  command: bob's ``bob`` command imports every registered plugin's command
  group (bob.bio.base's pipelines, dask) before it runs one.

A variant's ratio in a round is its wall time (process start to exit) over
the 2019-style script's in the same round; the report gives the median of
the rounds' ratios, and the cold run's ratio to ``eager`` (the issue's
targets: warm at most 1.5, cold at most 1). The runtime cache is a temporary
folder (``BOB_LEARN_PYTORCH_RUNTIME_CACHE``): the user's is never touched.
The first line names the processor and its instruction set (AVX-512 or AVX2,
from /proc/cpuinfo); the load average is printed before and after, since wall
times of fresh processes move with the machine's load.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RATE = 16000
#: The variants of ``extract-audio`` timed against the 2019-style script, in the report's order.
VARIANTS = ("eager", "auto-warm", "auto-cold", "cli-import")
#: The issue's targets: the warm ``auto`` run over the 2019-style script, the cold one over ``eager``.
WARM_TARGET, COLD_TARGET = 1.5, 1.0
#: The original's builders of the released networks (``bob.learn.pytorch.architectures``).
BUILDERS = {"dltresnet34": ("DltResNet", "dltresnet34"), "resnet34": ("ResNet", "resnet34")}


# -- the 2019-style script, run as a child of this one ------------------------------------------------


def script_2019(model: str, wav: str, network: str) -> None:
    """What the 2019 package did for one file: build, load, spectrogram, one eager forward (no bob import)."""
    import importlib

    import numpy
    import scipy.io.wavfile
    import torch

    module_name, builder = BUILDERS[network]
    build = getattr(importlib.import_module(f"bob.learn.pytorch.architectures.{module_name}"), builder)
    net = build(num_classes=1211, tp="emb", bn_dim=128)
    state = torch.load(model, map_location="cpu")
    state = state.get("state_dict", state)
    net.load_state_dict({key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()})
    net.eval()
    _, samples = scipy.io.wavfile.read(wav)
    signal = samples.astype(numpy.float64)
    frames = 1 + (len(signal) - 400) // 160
    window = numpy.hamming(400)
    specs = numpy.empty((frames, 257))
    for i in range(frames):
        frame = signal[i * 160 : i * 160 + 400]
        emphasised = numpy.append(frame[0], frame[1:] - 0.97 * frame[:-1])
        specs[i] = numpy.abs(numpy.fft.rfft(emphasised * window, 512))
    specs = (specs - specs.mean(axis=0)) / (specs.std(axis=0) + 1e-7)
    with torch.no_grad():
        embedding = net(torch.Tensor(specs[None, None]))
    print(embedding.shape[1])


# -- the machine -------------------------------------------------------------------------------------


def instruction_set() -> str:
    """``AVX-512``, ``AVX2`` or ``neither AVX-512 nor AVX2``, from the ``flags`` line of /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "neither AVX-512 nor AVX2"


def load_average() -> str:
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


# -- the runs ----------------------------------------------------------------------------------------


def bob_command() -> List[str]:
    """``bob pytorch``: bob's script beside this Python, else the group run as a module."""
    script = Path(sys.executable).with_name("bob")
    if script.is_file():
        return [str(script), "pytorch"]
    return [sys.executable, "-m", "bob.learn.pytorch.script.pytorch"]


def write_recording(path: Path, seconds: float) -> None:
    import numpy
    import scipy.io.wavfile

    samples = (numpy.random.default_rng(0).standard_normal(int(seconds * RATE)) * 3000).astype(numpy.int16)
    scipy.io.wavfile.write(path, RATE, samples)


def timed_run(command: Sequence[str], environment: Dict[str, str], cwd: Path) -> float:
    """Wall seconds of ``command`` from start to exit; a failed run stops the benchmark with its error output."""
    start = time.perf_counter()
    done = subprocess.run(list(command), env=environment, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed


class Runner:
    """The commands of one benchmark and the folders they use."""

    def __init__(self, folder: Path, model: str, network: str, seconds: float) -> None:
        self.folder = folder
        self.wav = folder / "one.wav"
        write_recording(self.wav, seconds)
        self.model, self.network = model, network
        self.warm_cache, self.cold_cache = folder / "warm-cache", folder / "cold-cache"
        self.environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def baseline(self) -> float:
        command = [sys.executable, str(Path(__file__).resolve()), "--script-2019", self.model, str(self.wav), self.network]
        return timed_run(command, self.environment, self.folder)

    def extract(self, backend: str, cache: Path) -> float:
        output = self.folder / "out.h5"
        command = bob_command() + ["extract-audio", str(self.wav), "-o", str(output), "--model", self.model,
                                   "--network", self.network, "--backend", backend, "-q"]
        environment = {**self.environment, "BOB_LEARN_PYTORCH_RUNTIME_CACHE": str(cache)}
        return timed_run(command, environment, self.folder)

    def variant(self, name: str) -> float:
        if name == "cli-import":
            return timed_run(bob_command() + ["extract-audio", "--help"], self.environment, self.folder)
        if name == "eager":
            return self.extract("eager", self.cold_cache)
        if name == "auto-warm":
            return self.extract("auto", self.warm_cache)
        shutil.rmtree(self.cold_cache, ignore_errors=True)  # empty: this run exports
        return self.extract("auto", self.cold_cache)


def measure(runner: Runner, variants: Sequence[str], pairs: int) -> Dict[str, List[float]]:
    """Seconds of each run, by variant (``script-2019`` included), rounds in rotated order."""
    if "auto-warm" in variants:
        runner.extract("auto", runner.warm_cache)  # fills the warm cache
    names = ["script-2019", *variants]
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    for round_number in range(pairs):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(runner.baseline() if name == "script-2019" else runner.variant(name))
    return seconds


def ratios(seconds: Dict[str, List[float]], numerator: str, denominator: str) -> List[float]:
    """The ratio of two variants' times in each round (paired)."""
    return [a / b for a, b in zip(seconds[numerator], seconds[denominator])]


def summary(seconds: Dict[str, List[float]]) -> Dict[str, Dict[str, float]]:
    """Median seconds and median, lowest and highest ratio to the 2019-style script, by variant."""
    rows = {}
    for name, times in seconds.items():
        paired = ratios(seconds, name, "script-2019")
        rows[name] = {"median_s": statistics.median(times), "ratio": statistics.median(paired),
                      "ratio_min": min(paired), "ratio_max": max(paired)}
    if "auto-cold" in seconds and "eager" in seconds:
        rows["auto-cold"]["ratio_to_eager"] = statistics.median(ratios(seconds, "auto-cold", "eager"))
    return rows


def print_report(report: Dict) -> None:
    machine = report["machine"]
    print(f"{machine['cpu']} ({machine['instruction_set']}), {machine['cpus']} CPUs; "
          f"load average {report['load_before']} before, {report['load_after']} after")
    print(f"one-off 'bob pytorch extract-audio' on one {report['seconds']:g} s recording, {report['network']}, "
          f"{report['pairs']} rounds; ratio = wall time / the 2019-style script's in the same round (median)")
    print(f"{'':<12} {'median s':>9} {'ratio':>7} {'range':>13}")
    for name, row in report["rows"].items():
        print(f"{name:<12} {row['median_s']:>9.2f} {row['ratio']:>7.2f} {row['ratio_min']:>6.2f}-{row['ratio_max']:<6.2f}")
    rows = report["rows"]
    if "auto-warm" in rows:
        verdict = "met" if rows["auto-warm"]["ratio"] <= WARM_TARGET else "NOT met"
        print(f"warm auto / 2019-style script: {rows['auto-warm']['ratio']:.2f} (target at most {WARM_TARGET:g}: {verdict})")
    if "ratio_to_eager" in rows.get("auto-cold", {}):
        cold = rows["auto-cold"]["ratio_to_eager"]
        print(f"cold auto / eager: {cold:.2f} (target at most {COLD_TARGET:g}: {'met' if cold <= COLD_TARGET else 'NOT met'})")


def model_file(model: Optional[str], network: str, folder: Path) -> str:
    """``--model``, else the test suite's reference checkpoint of the network (random weights, no download)."""
    if model:
        return model
    from bob.learn.pytorch.test.reference_checkpoints import write_reference_checkpoint

    path = folder / f"{network}.pth.tar"
    write_reference_checkpoint({"dltresnet34": "drn34", "resnet34": "rn34"}[network], path)
    return str(path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5, help="rounds; each runs the script and every variant once")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the recording")
    parser.add_argument("--network", choices=sorted(BUILDERS), default="dltresnet34")
    parser.add_argument("--model", help="model file (default: a reference checkpoint with random weights)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> Dict:
    args = parse_args(argv)
    from benchmarks.common import cpu_model

    with tempfile.TemporaryDirectory(prefix="bob-firstuse-") as name:
        folder = Path(name)
        runner = Runner(folder, model_file(args.model, args.network, folder), args.network, args.seconds)
        load_before = load_average()
        seconds = measure(runner, args.variants, args.pairs)
    report = {
        "machine": {"cpu": cpu_model(), "instruction_set": instruction_set(), "cpus": os.cpu_count()},
        "load_before": load_before,
        "load_after": load_average(),
        "network": args.network,
        "seconds": args.seconds,
        "pairs": args.pairs,
        "times": seconds,
        "rows": summary(seconds),
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--script-2019":
        script_2019(*sys.argv[2:])
    else:
        main()
