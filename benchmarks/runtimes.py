#!/usr/bin/env python3
"""What each runtime of the frame body buys: eager PyTorch, ONNX Runtime and version 1.0's MNN, in one process.

Usage (from the repository root)::

    .venv/bin/python benchmarks/runtimes.py [--network dltresnet34] [--durations 3 10 60]
                                            [--rounds 10] [--long-rounds 5] [--threads N] [--json FILE]

For the frame body (``network.forward_frames``, everything before the
pooling) of a random-weight network from the registry, on one utterance
(batch 1) of ``--durations`` seconds of random standardised spectrogram (100
frames per second, the front end's hop of 10 ms), it times, interleaved in
rounds whose order rotates, best of ``--rounds`` (``--long-rounds`` above 20 s):

- ``eager``: :class:`bob.learn.pytorch.runtimes.EagerRuntime`, the reference;
- ``onnxruntime``: version 2.0's ``"auto"`` when ONNX Runtime is installed;
- ``mnn``: the opt-in MNN runtime (``backend="mnn"``, the ``mnn`` extra, which
  ``make`` installs), Winograd F(2x2, 3x3) only, float32: the same engine and
  settings as version 1.0's ``"auto"`` on processors without AVX-512. MNN
  prints banners on the standard output.

each built by ``runtimes.build_runtime(network, name, bins)``, as the extractor builds it.

All three use ``--threads`` threads (torch's count by default). Before timing,
at each duration, every runtime's output is compared with eager's: the
largest difference relative to the largest eager value must stay below 1e-4,
else the runtime is reported and left out at that duration.

The report gives the milliseconds of each, the ratios ONNX Runtime / eager and
ONNX Runtime / MNN, and "2.0 auto / 1.0 auto": version 1.0's ``"auto"`` was MNN
on a processor without AVX-512 and ONNX Runtime on one with AVX-512 (the MNN
wheels have no AVX-512 kernels), version 2.0's is ONNX Runtime (eager when it
is not installed). The target for version 2.0 is a ratio of at most 1.10.

Timings move with the machine's load, printed with the results: compare the
ratios, which are measured within one process.
"""
import argparse
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import add_network_option, cpu_model, timed  # noqa: E402
from bob.learn.pytorch import runtimes  # noqa: E402

#: Largest difference from eager's frame features accepted, relative to their largest magnitude.
TOLERANCE = 1e-4
#: Durations above this many seconds are timed in ``--long-rounds`` rounds.
LONG_SECONDS = 20.0
#: Largest "2.0 auto / 1.0 auto" ratio the open issue accepts.
TARGET_RATIO = 1.10
#: Display names of the runtimes, in the report's order.
LABELS = {"eager": "eager", "onnxruntime": "ORT", "mnn": "MNN"}

FrameBody = Callable[[numpy.ndarray], numpy.ndarray]


# -- the machine --------------------------------------------------------------------------------------


def avx512() -> Tuple[bool, str]:
    """Whether the processor has AVX-512, and where that was read.

    The ``avx512f`` flag in /proc/cpuinfo, else the kernel set PyTorch
    reports (which ``ATEN_CPU_CAPABILITY`` can lower).
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return "avx512f" in line.split(":", 1)[1].split(), "avx512f flag in /proc/cpuinfo"
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return capability.upper().startswith("AVX512"), f"torch.backends.cpu.get_cpu_capability() = {capability}"


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- the runtimes -------------------------------------------------------------------------------------


def runtime_body(network: torch.nn.Module, name: str, bins: int) -> FrameBody:
    """The runtime ``name`` as ``build_runtime`` makes it (its check against eager included), on arrays."""
    runtime = runtimes.build_runtime(network, name, bins)

    def run(array: numpy.ndarray) -> numpy.ndarray:
        with torch.inference_mode():
            return runtime(torch.from_numpy(array)).numpy()

    return run


def build_bodies(network: torch.nn.Module, bins: int) -> Tuple[Dict[str, FrameBody], Dict[str, str]]:
    """The runtimes that could be built, and why the others could not."""
    bodies: Dict[str, FrameBody] = {}
    missing: Dict[str, str] = {}
    for name in ("eager", *runtimes.OPTIONAL_RUNTIMES):
        problem = runtimes.missing_runtime(name)
        if problem:
            missing[name] = problem
            continue
        try:
            bodies[name] = runtime_body(network, name, bins)
        except Exception as exc:  # noqa: BLE001 - reported, and left out of the comparison
            missing[name] = f"could not be built ({type(exc).__name__}: {exc})"
    sys.stdout.flush()  # MNN's banners come from C; keep them ahead of what follows
    return bodies, missing


# -- measuring ----------------------------------------------------------------------------------------


def relative_difference(output: numpy.ndarray, reference: numpy.ndarray) -> float:
    """Largest difference from ``reference``, relative to its largest magnitude (inf for another shape)."""
    if output.shape != reference.shape:
        return float("inf")
    return float(numpy.abs(output - reference).max()) / (float(numpy.abs(reference).max()) or 1.0)


def measure_duration(bodies: Dict[str, FrameBody], seconds: float, frames: int, bins: int, rounds: int) -> Dict:
    """Check every runtime against eager on one utterance, then time the ones that pass, best of ``rounds``."""
    array = numpy.random.default_rng(int(seconds * 1000)).standard_normal((1, 1, frames, bins)).astype(numpy.float32)
    reference = bodies["eager"](array)  # also eager's warm-up at this length
    differences, excluded = {}, {}
    for name, body in bodies.items():
        if name == "eager":
            continue
        differences[name] = relative_difference(body(array), reference)  # also the warm-up at this length
        if not differences[name] < TOLERANCE:
            excluded[name] = f"differs from eager by {differences[name]:.2e} relative (limit {TOLERANCE:.0e})"
    names = [name for name in bodies if name not in excluded]
    best = {name: float("inf") for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:  # every runtime goes first in turn
            best[name] = min(best[name], timed(lambda: bodies[name](array)))
    return {
        "seconds": seconds,
        "frames": frames,
        "rounds": rounds,
        "ms": {name: value * 1000 for name, value in best.items()},
        "relative_difference": differences,
        "excluded": excluded,
    }


def auto_choices(available: Dict[str, FrameBody], has_avx512: bool) -> Tuple[str, str]:
    """Version 2.0's and version 1.0's ``"auto"`` runtime on this machine."""
    auto_2_0 = runtimes.AUTO_RUNTIME if runtimes.AUTO_RUNTIME in available else "eager"
    auto_1_0 = "onnxruntime" if has_avx512 else "mnn"
    return auto_2_0, auto_1_0


def add_ratios(row: Dict, auto_2_0: str, auto_1_0: str) -> None:
    ms = row["ms"]

    def ratio(a: str, b: str) -> Optional[float]:
        return ms[a] / ms[b] if a in ms and b in ms else None

    row["ort_over_eager"] = ratio("onnxruntime", "eager")
    row["ort_over_mnn"] = ratio("onnxruntime", "mnn")
    row["auto_2_0_over_1_0"] = ratio(auto_2_0, auto_1_0)
    row["mnn_2_0_over_1_0"] = ratio("mnn", auto_1_0)


# -- report -------------------------------------------------------------------------------------------


def cell(value: Optional[float], width: int, digits: int) -> str:
    return f"{'--':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def verdict(ratio: Optional[float]) -> str:
    if ratio is None:
        return "n/a"
    if ratio <= TARGET_RATIO:
        return "ok"
    return f"{(ratio - 1) * 100:.0f}% slower"


def print_report(report: Dict) -> None:
    machine, setup = report["machine"], report["setup"]
    print()
    print(
        f"{machine['cpu']}, {machine['cpus']} CPUs, AVX-512: {'yes' if machine['avx512'] else 'no'} "
        f"({machine['avx512_source']}); torch {machine['torch']} ({machine['kernels']} kernels), "
        f"onnxruntime {machine['onnxruntime']}, MNN {machine['mnn']}"
    )
    print(
        f"frame body of {setup['network']} ({setup['title']}), batch 1, {setup['bins']} bins, "
        f"{setup['frames_per_second']:g} frames per second; {setup['threads']} thread(s) for every runtime "
        f"(torch.get_num_threads() = {torch.get_num_threads()})"
    )
    load_before, load_after = report["load_before"], report["load_after"]
    print(
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; best of {setup['rounds']} interleaved "
        f"rounds ({setup['long_rounds']} above {LONG_SECONDS:g} s)"
    )
    for name, reason in report["not_built"].items():
        print(f"{LABELS[name]} {reason}; left out")
    auto_2_0, auto_1_0 = report["auto_2_0"], report["auto_1_0"]
    why = "the MNN wheels have no AVX-512 kernels" if machine["avx512"] else "no AVX-512"
    if auto_1_0 == auto_2_0:
        note = " - the same runtime, so the ratio is 1 by construction"
    elif auto_1_0 in report["not_built"]:
        note = " - not measured here, so there is no 2.0/1.0 ratio"
    else:
        note = ""
    print(f"2.0 auto here: {auto_2_0}; 1.0 auto here: {auto_1_0} ({why}){note}")
    header = (
        f"{'audio':>6} {'frames':>6} | {'eager ms':>9} {'ORT ms':>8} {'MNN ms':>8} | "
        f"{'ORT/eager':>9} {'ORT/MNN':>8} {'2.0/1.0 auto':>12} {'<= 1.10':>11} {'mnn/1.0 auto':>12} | "
        f"{'diff ORT':>8} {'diff MNN':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        ms, diff = row["ms"], row["relative_difference"]
        ratio = row["auto_2_0_over_1_0"]
        print(
            f"{row['seconds']:>5g}s {row['frames']:>6} | {cell(ms.get('eager'), 9, 1)} "
            f"{cell(ms.get('onnxruntime'), 8, 1)} {cell(ms.get('mnn'), 8, 1)} | {cell(row['ort_over_eager'], 9, 2)} "
            f"{cell(row['ort_over_mnn'], 8, 2)} {cell(ratio, 12, 2)} {verdict(ratio):>11} "
            f"{cell(row['mnn_2_0_over_1_0'], 12, 2)} | "
            f"{diff.get('onnxruntime', float('nan')):>8.1e} {diff.get('mnn', float('nan')):>8.1e}"
        )
        for name, reason in row["excluded"].items():
            print(f"       {LABELS[name]} left out at {row['seconds']:g} s: {reason}")
    print(
        "ms: best time of one frame-body call; 2.0/1.0 auto: version 2.0's auto runtime / version 1.0's, "
        f"target <= {TARGET_RATIO:.2f}; mnn/1.0 auto: 2.0's opt-in backend 'mnn' / version 1.0's auto; diff: max |output - eager| / max |eager| before timing "
        f"(limit {TOLERANCE:.0e}; nan: not built)"
    )



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_network_option(parser)
    parser.add_argument("--durations", type=float, nargs="+", default=[3.0, 10.0, 60.0], help="seconds of audio")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--long-rounds", type=int, default=5, help=f"rounds for durations above {LONG_SECONDS:g} s")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of every runtime")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.long_rounds < 1 or args.threads < 1:
        parser.error("--rounds, --long-rounds and --threads must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # build_runtime gives ONNX Runtime torch's count
    load_before = os.getloadavg()
    record = args.network
    bins = record.front_end.bins
    frames_per_second = 1000.0 / record.front_end.win_shift_ms
    network = record.build().eval()
    bodies, not_built = build_bodies(network, bins)
    has_avx512, avx512_source = avx512()
    auto_2_0, auto_1_0 = auto_choices(bodies, has_avx512)
    rows = []
    for seconds in args.durations:
        rounds = args.long_rounds if seconds > LONG_SECONDS else args.rounds
        row = measure_duration(bodies, seconds, int(round(seconds * frames_per_second)), bins, rounds)
        add_ratios(row, auto_2_0, auto_1_0)
        rows.append(row)
    report = {
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "avx512": has_avx512,
            "avx512_source": avx512_source,
            "kernels": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "onnxruntime": version_of("onnxruntime"),
            "mnn": version_of("MNN") if "mnn" in bodies else "not used",
        },
        "setup": {
            "network": record.name,
            "title": record.title,
            "bins": bins,
            "frames_per_second": frames_per_second,
            "threads": args.threads,
            "rounds": args.rounds,
            "long_rounds": args.long_rounds,
        },
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "not_built": not_built,
        "auto_2_0": auto_2_0,
        "auto_1_0": auto_1_0,
        "rows": rows,
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
