"""Cohort statistics for AS-norm: chunked (the package) against the whole score matrix (baseline), side by side.

Scores N probe embeddings against a cohort of C embeddings (cosine) and
finds each probe's mean and standard deviation over its ``top_n`` highest
cohort scores, twice in one process:

* chunked: :func:`bob.learn.pytorch.scoring.cohort_statistics`, ``chunk_rows``
  probes at a time (memory ~ ``chunk_rows x C`` scores);
* baseline: the whole ``N x C`` matrix, then :func:`numpy.partition` of it.

Peak memory is the peak of NumPy's allocations traced by :mod:`tracemalloc`
during each run; time is wall-clock. Both give the same statistics (the
largest difference is printed). ``make bench`` runs it with the defaults
(10,000 x 10,000, 128 dimensions, top 300).

Example::

    python benchmarks/cohort.py --probes 10000 --cohort 10000 --top-n 300
"""
import argparse
import json
import os
import sys
import time
import tracemalloc
from typing import Callable, Dict, Tuple

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import cpu_model  # noqa: E402
from bob.learn.pytorch.scoring import DEFAULT_CHUNK_ROWS, cohort_statistics, l2_normalise  # noqa: E402


def baseline_statistics(probes: numpy.ndarray, cohort: numpy.ndarray, top_n: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """The unchunked way: all N x C scores at once, then the top_n of every row."""
    scores = l2_normalise(probes) @ l2_normalise(cohort).T
    top = numpy.partition(scores, scores.shape[1] - top_n, axis=1)[:, scores.shape[1] - top_n :]
    return top.mean(axis=1), top.std(axis=1)


def measured(function: Callable[[], object]) -> Tuple[object, float, float]:
    """``(result, seconds, peak MiB of traced allocations)`` of one call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def run(n_probes: int, n_cohort: int, dim: int, top_n: int, chunk_rows: int, seed: int = 0) -> Dict[str, float]:
    rng = numpy.random.default_rng(seed)
    probes = rng.standard_normal((n_probes, dim)).astype(numpy.float32)
    cohort = rng.standard_normal((n_cohort, dim)).astype(numpy.float32)
    chunked, chunked_s, chunked_mb = measured(lambda: cohort_statistics(probes, cohort, top_n, chunk_rows))
    baseline, baseline_s, baseline_mb = measured(lambda: baseline_statistics(probes, cohort, top_n))
    difference = max(float(numpy.max(numpy.abs(chunked.mean - baseline[0]))),
                     float(numpy.max(numpy.abs(chunked.std - baseline[1]))))
    return {
        "probes": n_probes, "cohort": n_cohort, "dim": dim, "top_n": top_n, "chunk_rows": chunk_rows,
        "chunked_s": chunked_s, "baseline_s": baseline_s, "chunked_peak_mib": chunked_mb,
        "baseline_peak_mib": baseline_mb, "max_difference": difference,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=10_000)
    parser.add_argument("--cohort", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128, help="embedding dimensions (128 for both networks)")
    parser.add_argument("--top-n", type=int, default=300)
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args.probes, args.cohort, args.dim, args.top_n, args.chunk_rows)
    print(f"cohort statistics, {cpu_model()}, {os.cpu_count()} CPUs: {result['probes']} probes x {result['cohort']} "
          f"cohort embeddings ({result['dim']} dims), top {result['top_n']}, chunks of {result['chunk_rows']} rows")
    print(f"  chunked (package): {result['chunked_s']:.2f} s, peak {result['chunked_peak_mib']:.0f} MiB")
    print(f"  whole matrix:      {result['baseline_s']:.2f} s, peak {result['baseline_peak_mib']:.0f} MiB")
    print(f"  ratios chunked/whole: time {result['chunked_s'] / result['baseline_s']:.2f}, "
          f"memory {result['chunked_peak_mib'] / result['baseline_peak_mib']:.3f}; "
          f"largest difference {result['max_difference']:.1e}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
