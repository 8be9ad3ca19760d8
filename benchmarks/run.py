#!/usr/bin/env python3
"""Speed and memory of the audio embedding extractor, measured side by side in one process.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py [--network dltresnet34] [--model FILE] [--rounds 5] [--threads N]

For 3 s, 10 s and 60 s utterances of fresh random audio it prints, best of
``--rounds`` interleaved rounds:

- the real-time factor (seconds of compute per second of audio) of one-by-one
  ``extractor(audio)`` calls, of ``extractor.embed_many(audios)`` and of a
  straightforward implementation of the original's path (per-frame spectrogram
  loop in float64, eager forward under ``no_grad``, batch 1);
- the effective GFLOP/s of each (network FLOPs counted with
  :class:`torch.utils.flop_counter.FlopCounterMode`, spectrogram time included)
  divided by the GFLOP/s of a 2048x2048 float32 matrix product measured in the
  same rounds;
- the speed-up of the public API over that baseline;

then the peak resident memory of a subprocess embedding one long recording
(``--long-minutes``, 60 by default) with ``extractor(audio)``.

Timings move with the machine's load, printed with the results: compare the
ratios, which are measured within one process.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import add_memory_options, add_network_option, cpu_model, registered_network, timed  # noqa: E402
from bob.learn.pytorch.pipeline import EmbeddingPipeline  # noqa: E402
from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor  # noqa: E402
from bob.learn.pytorch.runtimes import RUNTIMES  # noqa: E402
from bob.learn.pytorch.embedding import standardize  # noqa: E402
from bob.learn.pytorch.frontend import prepare_signal  # noqa: E402

RATE = 16000
MATMUL_SIZE = 2048


# -- the baseline: the original's path, written plainly ---------------------------------------------


def baseline_spectrogram(signal: numpy.ndarray) -> numpy.ndarray:
    """bob.ap's spectrogram (25 ms / 10 ms, pre-emphasis 0.97), one frame at a time in float64."""
    win_length, win_shift, fft_size = 400, 160, 512
    window = numpy.hamming(win_length)
    n_frames = 1 + (len(signal) - win_length) // win_shift
    output = numpy.empty((n_frames, fft_size // 2 + 1))
    carried = 0.0
    for i in range(n_frames):
        frame = signal[i * win_shift : i * win_shift + win_length].copy()
        frame -= frame.sum() / fft_size
        emphasised = numpy.empty(win_length)
        emphasised[0] = frame[0] - 0.97 * carried
        emphasised[1:] = frame[1:] - 0.97 * frame[:-1]
        carried = frame[win_shift - 1]
        output[i] = numpy.abs(numpy.fft.rfft(emphasised * window, fft_size))
    return output


def baseline_embed(network: torch.nn.Module, audio) -> numpy.ndarray:
    """Whole-utterance embedding as the original computed it: eager, ``no_grad``, batch 1."""
    specs = standardize(baseline_spectrogram(prepare_signal(audio)))
    with torch.no_grad():
        return network(torch.Tensor(numpy.array([specs])).unsqueeze(1)).numpy()


# -- helpers ------------------------------------------------------------------------------------------


def fresh_audio(seconds: float, count: int, seed: int) -> List[tuple]:
    """``count`` recordings of random int16 noise, generated in blocks so that no float copy is ever whole."""
    rng = numpy.random.default_rng(seed)
    audios = []
    for _ in range(count):
        samples = numpy.empty(int(seconds * RATE), dtype=numpy.int16)
        for start in range(0, len(samples), 1 << 20):
            block = samples[start : start + (1 << 20)]
            block[:] = rng.standard_normal(len(block)) * 3000
        audios.append((RATE, samples))
    return audios


def network_flops(network: torch.nn.Module, n_frames: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(1, 1, n_frames, 257))
    return counter.get_total_flops()


def model_file(args: argparse.Namespace, folder: str) -> str:
    """The model to benchmark: --model, else a reference checkpoint built into ``folder``.

    Speed does not depend on the weights; the reference checkpoint (random
    weights in the released files' layout, built by the test suite's builder)
    only spares the benchmark a download.
    """
    if args.model:
        return args.model
    from bob.learn.pytorch.test.reference_checkpoints import SEEDS, write_reference_checkpoint

    record = args.network
    reference = next((name for name in (record.name, *record.aliases) if name in SEEDS), None)
    if reference is None:
        raise SystemExit(f"no reference checkpoint for {record.name}: pass --model FILE")
    path = os.path.join(folder, f"{reference}.pth.tar")
    write_reference_checkpoint(reference, path)
    return path


def make_extractor(args: argparse.Namespace, path: str) -> EmbeddingExtractor:
    return EmbeddingExtractor(args.network, path, backend=args.backend)


# -- speed --------------------------------------------------------------------------------------------


def measure_duration(extractor, seconds: float, args: argparse.Namespace) -> Dict[str, float]:
    count = args.batch_size
    network = extractor.network
    n_frames = 1 + (int(seconds * RATE) - 400) // 160
    flops = network_flops(network, n_frames) * count
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    eager = EmbeddingPipeline(extractor.pretrained, network)  # the same network, every layer in eager PyTorch
    best = {key: float("inf") for key in ("matmul", "one_by_one", "eager", "batch", "baseline")}
    check = 0.0
    for round_ in range(args.rounds + 1):  # round 0 warms up
        audios = fresh_audio(seconds, count, seed=round_)
        times = {
            "matmul": min(timed(lambda: a @ b) for _ in range(3)),
            "one_by_one": timed(lambda: [extractor(audio) for audio in audios]),
            "eager": timed(lambda: [eager.embed(audio) for audio in audios]),
            "batch": timed(lambda: extractor.embed_many(audios, batch_size=args.batch_size)),
            "baseline": timed(lambda: [baseline_embed(network, audio) for audio in audios[: args.baseline_count]])
            * count
            / args.baseline_count,
        }
        if round_ == 0:
            reference = numpy.vstack([baseline_embed(network, audio) for audio in audios[:2]])
            check = float(numpy.abs(extractor.embed_many(audios[:2]) - reference).max())
            continue
        for key, value in times.items():
            best[key] = min(best[key], value)
    matmul_gflops = 2 * MATMUL_SIZE**3 / best["matmul"] / 1e9
    audio_seconds = seconds * count
    result = {"seconds": seconds, "matmul_gflops": matmul_gflops, "max_abs_diff_vs_baseline": check}
    for key in ("one_by_one", "batch", "baseline"):
        result[f"rtf_{key}"] = best[key] / audio_seconds
        result[f"fraction_{key}"] = flops / best[key] / 1e9 / matmul_gflops
    result["speedup_one_by_one"] = best["baseline"] / best["one_by_one"]
    result["speedup_batch"] = best["baseline"] / best["batch"]
    result["speedup_over_eager"] = best["eager"] / best["one_by_one"]
    return result


# -- memory -------------------------------------------------------------------------------------------


def memory_child(args: argparse.Namespace) -> None:
    """Run in a subprocess: embed one long recording, print the peak RSS as JSON."""
    extractor = make_extractor(args, args.model)
    extractor(fresh_audio(3, 1, seed=1)[0])  # load the network and build the fast path
    ready = peak_rss_mb()
    audio = fresh_audio(args.long_minutes * 60, 1, seed=2)[0]
    start = time.perf_counter()
    embedding = extractor(audio)
    elapsed = time.perf_counter() - start
    assert embedding.shape == (1, 128) and numpy.all(numpy.isfinite(embedding))
    result = {"ready_mb": ready, "peak_mb": peak_rss_mb(), "seconds": elapsed, "input_mb": audio[1].nbytes / 2**20}
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    On Linux ``ru_maxrss`` survives ``exec``: a child forked from a large
    parent starts with the parent's peak. The kernel's ``VmHWM`` belongs to the
    address space and starts afresh at ``exec``, so it is preferred.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(args: argparse.Namespace, path: str) -> Dict[str, float]:
    command = [sys.executable, __file__, "--memory-child", "--model", path, "--network", args.network.name]
    command += ["--long-minutes", str(args.long_minutes), "--threads", str(torch.get_num_threads())]
    command += ["--backend", args.backend]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- report -------------------------------------------------------------------------------------------


def print_report(
    rows: List[Dict[str, float]], memory: Dict[str, float], args, backend: str, load_before, load_after
) -> None:
    print(f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()} kernels), {os.cpu_count()} CPUs")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, network={args.network.name}, "
        f"backend={backend} (--backend {args.backend})"
    )
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; best of {args.rounds} rounds, "
          f"{args.batch_size} utterances per measurement")
    header = (
        f"{'audio':>6} {'matmul':>8} | {'RTF call':>9} {'RTF batch':>9} {'RTF base':>9} | "
        f"{'frac call':>9} {'frac batch':>10} {'frac base':>9} | {'x call':>6} {'x batch':>7} {'x eager':>7} | "
        f"{'diff':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['seconds']:>5.0f}s {row['matmul_gflops']:>8.1f} | "
            f"{row['rtf_one_by_one']:>9.5f} {row['rtf_batch']:>9.5f} {row['rtf_baseline']:>9.5f} | "
            f"{row['fraction_one_by_one']:>9.2f} {row['fraction_batch']:>10.2f} {row['fraction_baseline']:>9.2f} | "
            f"{row['speedup_one_by_one']:>6.2f} {row['speedup_batch']:>7.2f} {row['speedup_over_eager']:>7.2f} | "
            f"{row['max_abs_diff_vs_baseline']:>7.1e}"
        )
    print("matmul: GFLOP/s of a 2048x2048 float32 product; frac: network GFLOP/s (end to end, spectrogram "
          "included) / matmul; x: speed-up over the baseline; x eager: one-by-one calls with every layer in eager "
          "PyTorch / with the runtime; diff: max |embedding - baseline|")
    if memory:
        print(
            f"long file: {args.long_minutes} min at 16 kHz int16 ({memory['input_mb']:.0f} MiB of samples) embedded "
            f"in {memory['seconds']:.1f} s (RTF {memory['seconds'] / (60 * args.long_minutes):.5f}); peak RSS "
            f"{memory['peak_mb']:.0f} MiB (VmHWM; ru_maxrss {memory['maxrss_mb']:.0f} MiB; process with the model "
            f"loaded: {memory['ready_mb']:.0f} MiB)"
        )



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: a random-weight reference checkpoint)")
    add_network_option(parser)
    # Version 1.0's --net drn|rn, kept working: drn and rn are aliases in the registry.
    parser.add_argument(
        "--net", dest="network", type=registered_network, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--backend", choices=RUNTIMES, default="auto", help="runtime of the network (extractor backend)")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per measurement and per batch")
    parser.add_argument("--baseline-count", type=int, default=2, help="utterances the slow baseline embeds per round")
    parser.add_argument("--durations", type=float, nargs="+", default=[3.0, 10.0, 60.0])
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
        extractor = make_extractor(args, path)
        memory = {} if args.skip_memory else measure_memory(args, path)  # first, while this process is small
        rows = [measure_duration(extractor, seconds, args) for seconds in args.durations]
        backend = extractor.runtime
    print_report(rows, memory, args, backend, load_before, os.getloadavg())
    if args.json:
        machine = {"cpu": cpu_model(), "kernels": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count()}
        report = {"machine": machine, "network": args.network.name, "backend": backend, "speed": rows, "memory": memory}
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
