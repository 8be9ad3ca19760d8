#!/usr/bin/env python3
"""Recordings per second of ``bob bio pipeline simple`` without dask and on dask clusters, side by side.

Usage (from the repository root)::

    .venv/bin/python benchmarks/cluster.py [--model FILE] [--copies 24] [--rounds 2] [--partitions 8]

Each layout runs ``bob bio pipeline simple -p dltresnet34-voxceleb`` on the
package's 17 recordings (about 3 s each) copied ``--copies`` times:

- ``no-dask``: ``--no-dask``, one process with torch's own thread count;
- ``WxT``: a ``dask scheduler`` and W ``dask worker --nthreads T`` processes
  on 127.0.0.1 (local_cluster.py, the commands doc/bob_integration.rst shows),
  handed to bob with ``-l client.py``; dask's nanny starts each worker with
  ``OMP_NUM_THREADS=1`` and ``MKL_NUM_THREADS=1``, so torch runs one thread
  per task;
- ``1x1 torch2``: one worker with one thread, started with
  ``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"OMP_NUM_THREADS": 2, "MKL_NUM_THREADS": 2}'``,
  so that its one task uses two torch threads (torch follows
  ``MKL_NUM_THREADS`` when it is set, so ``OMP_NUM_THREADS`` alone is not enough).

All clusters are started first and warmed up by one run each (the workers
load the network then), so the timed runs measure the steady state. In each
round every layout embeds the small set (the 17 recordings) and the large
set, in an order that rotates from round to round; the rate is

    (large count - small count) / (large time - small time)

with the best time of each over the rounds, so that what every run of bob
pays once (starting Python, importing bob and torch, building the graph, and
for ``--no-dask`` loading the network) cancels out. The whole-command rate of
the large set is printed too. Scores of every layout are compared with the
``--no-dask`` ones. The machine's load averages are printed with the results:
compare the ratios, measured in one run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bob.learn.pytorch.database import read_speakers  # noqa: E402
from bob.learn.pytorch.test.local_cluster import LocalCluster  # noqa: E402

SPEECH = REPO / "bob" / "learn" / "pytorch" / "data" / "speech"
BOB = Path(sys.executable).with_name("bob")
#: Layout name -> (workers, threads per worker, extra worker environment); workers 0 means --no-dask.
LAYOUTS = {
    "no-dask": (0, 0, {}),
    "1x1": (1, 1, {}),
    "1x2": (1, 2, {}),
    "2x1": (2, 1, {}),
    "1x1 torch2": (
        1, 1, {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": '{"OMP_NUM_THREADS": 2, "MKL_NUM_THREADS": 2}'}
    ),
}


def prepare(folder: Path, copies: int, model: Optional[str]) -> Dict[str, object]:
    """Model, settings, and two databases (17 recordings, and 17 x ``copies``) in ``folder``."""
    home = folder / "home"
    (home / ".config").mkdir(parents=True)
    if model is None:
        from bob.learn.pytorch.test.reference_checkpoints import write_reference_checkpoint

        model = str(folder / "drn34.pth.tar")
        write_reference_checkpoint("drn34", model)
    (home / "bobrc.json").write_text(json.dumps({"bob.learn.pytorch.extractor.audio.drn_modelpath": model}))
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), BOBRC=str(home / "bobrc.json"))
    speakers = read_speakers(SPEECH / "speakers.csv")
    databases = {}
    for label, count in (("small", 1), ("large", copies)):
        recordings = folder / label
        recordings.mkdir()
        table = {}
        for copy in range(count):
            for name, speaker in speakers.items():
                target = f"{Path(name).stem}_c{copy:03d}.wav"
                shutil.copy(SPEECH / name, recordings / target)
                table[target] = f"{speaker}_c{copy:03d}"
        rows = "".join(f"{name},{speaker}\n" for name, speaker in sorted(table.items()))
        (folder / f"{label}.csv").write_text("file,speaker\n" + rows)
        config = folder / f"{label}_database.py"
        config.write_text(
            "from bob.learn.pytorch.database import recordings_database\n\n"
            f"database = recordings_database({str(recordings)!r}, {str(folder / (label + '_protocols'))!r}, "
            f"{str(folder / (label + '.csv'))!r}, enroll_per_speaker=2)\n"
        )
        databases[label] = (config, len(table))
    return {"env": env, "databases": databases}


def run_bob(database: Path, output: Path, options: List[str], env: Dict[str, str], partitions: int) -> float:
    """Seconds that one ``bob bio pipeline simple`` command takes."""
    command = [str(BOB), "bio", "pipeline", "simple", "-p", "dltresnet34-voxceleb", "-d", str(database),
               "-o", str(output), "-c", str(output / "embeddings"), "--write-column-scores", *options]
    if "--no-dask" not in options:
        command += ["--dask-n-partitions", str(partitions)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=output.parent)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return elapsed


def read_scores(path: Path) -> Dict[tuple, float]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return {(row[0], row[2]): float(row[3]) for row in rows}


def worker_facts(cluster: LocalCluster) -> Dict[str, object]:
    """Torch threads and resident memory of each worker, and what the scheduler imported and holds."""
    import distributed

    def on_worker():
        import psutil
        import torch

        return torch.get_num_threads(), psutil.Process().memory_info().rss / 2**20

    def on_scheduler():
        import psutil

        return "torch" in sys.modules, psutil.Process().memory_info().rss / 2**20

    with distributed.Client(cluster.address, timeout=30) as client:
        workers = list(client.run(on_worker).values())
        scheduler_torch, scheduler_mb = client.run_on_scheduler(on_scheduler)
    return {
        "torch_threads": [threads for threads, _ in workers],
        "worker_mb": [round(mb) for _, mb in workers],
        "scheduler_imports_torch": scheduler_torch,
        "scheduler_mb": round(scheduler_mb),
    }


def stalls(cluster: LocalCluster) -> List[float]:
    """Seconds of every 'Event loop was unresponsive' warning in the scheduler's and workers' logs."""
    found = []
    for path in sorted(cluster.folder.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if "Event loop was unresponsive" in line:
                found.append(float(line.rsplit(" for ", 1)[1].split("s.")[0]))
    return found


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="DltResNet-34 model file (default: a random-weight reference checkpoint)")
    parser.add_argument("--copies", type=int, default=24, help="copies of the 17 recordings in the large set")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best time of each is kept")
    parser.add_argument("--partitions", type=int, default=8, help="--dask-n-partitions of the dask runs")
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="bob-cluster-bench-"))
    clusters: Dict[str, LocalCluster] = {}
    try:
        setup = prepare(folder, args.copies, args.model)
        env, databases = setup["env"], setup["databases"]
        for name in args.layouts:
            workers, threads, worker_env = LAYOUTS[name]
            if workers:
                cluster = LocalCluster(folder / f"cluster-{name.replace(' ', '-')}", workers, threads, env=env,
                                       worker_env=worker_env)
                clusters[name] = cluster.start()
        options = {
            name: ["--no-dask"] if name not in clusters else ["-l", str(clusters[name].client_file)]
            for name in args.layouts
        }
        runs = 0

        def timed(name: str, label: str) -> float:
            nonlocal runs
            runs += 1
            output = folder / f"run-{runs:03d}"
            output.mkdir()
            seconds = run_bob(databases[label][0], output, options[name], env, args.partitions)
            if label == "large":
                scores[name].append(read_scores(output / "scores-dev"))
            return seconds

        scores: Dict[str, list] = {name: [] for name in args.layouts}
        for name in args.layouts:  # warm-up: the workers load the network and build its fast form
            timed(name, "small")
        best = {name: {"small": float("inf"), "large": float("inf")} for name in args.layouts}
        for round_ in range(args.rounds):
            order = args.layouts[round_ % len(args.layouts):] + args.layouts[: round_ % len(args.layouts)]
            for name in order:
                for label in ("small", "large"):
                    best[name][label] = min(best[name][label], timed(name, label))
        facts = {name: worker_facts(cluster) for name, cluster in clusters.items()}
        stalled = {name: stalls(cluster) for name, cluster in clusters.items()}
    finally:
        for cluster in clusters.values():
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()

    small, large = databases["small"][1], databases["large"][1]
    reference = scores["no-dask"][0] if "no-dask" in scores else scores[args.layouts[0]][0]
    rows = []
    for name in args.layouts:
        workers, threads, _ = LAYOUTS[name]
        diff = max(abs(run[pair] - reference[pair]) for run in scores[name] for pair in reference)
        rows.append({
            "layout": name,
            "workers": workers,
            "threads_per_worker": threads,
            "rate": (large - small) / (best[name]["large"] - best[name]["small"]),
            "whole_command_rate": large / best[name]["large"],
            "small_seconds": best[name]["small"],
            "large_seconds": best[name]["large"],
            "max_score_diff": diff,
            **facts.get(name, {}),
            "stalls": stalled.get(name, []),
        })
    print_report(rows, args, small, large, load_before, load_after)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": [load_before, load_after]}, indent=2))


def print_report(rows, args, small: int, large: int, load_before, load_after) -> None:
    print(f"{os.cpu_count()} CPUs; load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)}; best of {args.rounds} interleaved rounds; "
          f"{small} and {large} recordings of about 3 s; --dask-n-partitions {args.partitions}")
    header = (f"{'layout':<10} {'workers':>7} {'thr/w':>5} {'torch thr':>9} | {'rec/s':>6} {'whole':>6} | "
              f"{'small s':>7} {'large s':>7} | {'score diff':>10} | {'worker MB':>10} {'sched MB':>8} torch?")
    print(header)
    print("-" * len(header))
    for row in rows:
        threads = ",".join(str(t) for t in row.get("torch_threads", [])) or "own"
        memory = ",".join(str(m) for m in row.get("worker_mb", [])) or "-"
        print(f"{row['layout']:<10} {row['workers']:>7} {row['threads_per_worker']:>5} {threads:>9} | "
              f"{row['rate']:>6.1f} {row['whole_command_rate']:>6.1f} | {row['small_seconds']:>7.1f} "
              f"{row['large_seconds']:>7.1f} | {row['max_score_diff']:>10.1e} | {memory:>10} "
              f"{row.get('scheduler_mb', '-'):>8} {row.get('scheduler_imports_torch', '-')}")
    by_name = {row["layout"]: row for row in rows}
    for name in ("1x2", "2x1", "1x1 torch2", "no-dask"):
        if name in by_name and "1x1" in by_name and name != "1x1":
            print(f"{name} / 1x1: {by_name[name]['rate'] / by_name['1x1']['rate']:.2f}")
    print("rec/s: (large - small) / (large time - small time), the steady rate without bob's start-up; "
          "whole: large / large time; score diff: max |score - no-dask score|")
    for row in rows:
        if row["stalls"]:
            print(f"{row['layout']}: event loops unresponsive for {', '.join(f'{s:.1f}' for s in row['stalls'])} s")


if __name__ == "__main__":
    main()
