#!/usr/bin/env python3
"""Sliding-window embeddings: windows per second against embedding each crop one by one, and the 60-minute peak memory.

Usage (from the repository root)::

    .venv/bin/python benchmarks/windows.py [--window 1.5] [--step 0.75] [--minutes 1] [--rounds 3]

On ``--minutes`` of fresh random int16 audio at 16 kHz it prints, best of
``--rounds`` interleaved rounds, the windows embedded per second by
``extractor.embed_windows(audio, window, step)`` (batched, the spectrogram
shared between overlapping windows) and by ``extractor(crop)`` called on each
window's crop in turn, the ratio of the two, and the largest difference
between their rows. Then, in a subprocess, the peak resident memory of
``embed_windows`` on a ``--long-minutes`` recording (60 by default).

Timings move with the machine's load, printed with the results: compare the
ratio, measured within one process.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import add_memory_options, add_network_option, cpu_model  # noqa: E402
from benchmarks.run import fresh_audio, model_file, peak_rss_mb  # noqa: E402
from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor  # noqa: E402
from bob.learn.pytorch.runtimes import RUNTIMES  # noqa: E402


def one_by_one(extractor: EmbeddingExtractor, audio, times: numpy.ndarray) -> numpy.ndarray:
    """Each window's crop embedded alone, as a user without ``embed_windows`` would."""
    rate, samples = audio
    return numpy.vstack([extractor((rate, samples[round(s * rate) : round(e * rate)])) for s, e in times])


def measure_speed(extractor: EmbeddingExtractor, args: argparse.Namespace) -> dict:
    best_windows = best_crops = float("inf")
    largest_difference = 0.0
    count = 0
    for round_index in range(args.rounds):
        audio = fresh_audio(args.minutes * 60, 1, seed=10 + round_index)[0]
        start = time.perf_counter()
        rows, times = extractor.embed_windows(audio, args.window, args.step)
        best_windows = min(best_windows, time.perf_counter() - start)
        start = time.perf_counter()
        crops = one_by_one(extractor, audio, times)
        best_crops = min(best_crops, time.perf_counter() - start)
        largest_difference = max(largest_difference, float(numpy.abs(rows - crops).max()))
        count = len(times)
    return {
        "windows": count,
        "windows_per_second": count / best_windows,
        "crops_per_second": count / best_crops,
        "speedup": best_crops / best_windows,
        "max_abs_diff": largest_difference,
    }


def memory_child(args: argparse.Namespace) -> None:
    """Run in a subprocess: windows over one long recording; print the peak RSS as JSON."""
    extractor = EmbeddingExtractor(args.network, args.model, backend=args.backend)
    extractor.embed_windows(fresh_audio(5, 1, seed=1)[0], args.window, args.step)  # load and build the runtime
    ready = peak_rss_mb()
    audio = fresh_audio(args.long_minutes * 60, 1, seed=2)[0]
    start = time.perf_counter()
    rows, times = extractor.embed_windows(audio, args.window, args.step)
    elapsed = time.perf_counter() - start
    assert rows.shape == (len(times), extractor.bn_dim) and numpy.all(numpy.isfinite(rows))
    print(json.dumps({"ready_mb": ready, "peak_mb": peak_rss_mb(), "seconds": elapsed, "windows": len(times),
                      "input_mb": audio[1].nbytes / 2**20}))


def measure_memory(args: argparse.Namespace, path: str) -> dict:
    command = [sys.executable, __file__, "--memory-child", "--model", path, "--network", args.network.name,
               "--long-minutes", str(args.long_minutes), "--window", str(args.window), "--step", str(args.step),
               "--threads", str(torch.get_num_threads()), "--backend", args.backend]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_report(speed: dict, memory: dict, args: argparse.Namespace, backend: str, load_before, load_after) -> None:
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"network={args.network.name}, backend={backend}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; best of {args.rounds} rounds")
    print(f"windows of {args.window:g} s every {args.step:g} s over {args.minutes:g} min ({speed['windows']} windows): "
          f"embed_windows {speed['windows_per_second']:.1f} windows/s, one crop at a time "
          f"{speed['crops_per_second']:.1f} windows/s, x{speed['speedup']:.2f}; max |difference| "
          f"{speed['max_abs_diff']:.1e}")
    if memory:
        print(f"long file: {args.long_minutes:g} min at 16 kHz int16 ({memory['input_mb']:.0f} MiB of samples), "
              f"{memory['windows']} windows in {memory['seconds']:.1f} s; peak RSS {memory['peak_mb']:.0f} MiB "
              f"(VmHWM; process with the model loaded: {memory['ready_mb']:.0f} MiB)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: a random-weight reference checkpoint)")
    add_network_option(parser)
    parser.add_argument("--backend", choices=RUNTIMES, default="auto", help="runtime of the network")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--window", type=float, default=1.5, help="window length in seconds")
    parser.add_argument("--step", type=float, default=0.75, help="seconds between window starts")
    parser.add_argument("--minutes", type=float, default=1.0, help="length of the speed test recording")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
    add_memory_options(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        path = model_file(args, folder)
        memory = {} if args.skip_memory else measure_memory(args, path)  # first, while this process is small
        extractor = EmbeddingExtractor(args.network, path, backend=args.backend)
        extractor(fresh_audio(3, 1, seed=1)[0])  # load the network and build the runtime outside the timings
        speed = measure_speed(extractor, args)
        backend = extractor.runtime
    print_report(speed, memory, args, backend, load_before, os.getloadavg())
    if args.json:
        report = {"machine": {"cpu": cpu_model(), "cpus": os.cpu_count()}, "network": args.network.name,
                  "backend": backend, "window": args.window, "step": args.step, "speed": speed, "memory": memory}
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
