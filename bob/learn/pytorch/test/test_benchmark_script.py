"""The benchmark script still runs and reports what the README's figures come from (no timing is checked)."""
import importlib.util
import json

import pytest

from .conftest import REPO

BENCHMARK = REPO / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def benchmark_module():
    if not BENCHMARK.is_file():
        pytest.skip("benchmarks/run.py is not shipped in installed packages")
    spec = importlib.util.spec_from_file_location("benchmark_run", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_reports_every_figure(benchmark_module, drn_file, tmp_path, capsys):
    report = tmp_path / "bench.json"
    arguments = ["--model", str(drn_file), "--durations", "0.6", "--rounds", "1", "--batch-size", "2"]
    benchmark_module.main(arguments + ["--baseline-count", "1", "--skip-memory", "--json", str(report)])
    result = json.loads(report.read_text())
    assert set(result["machine"]) == {"cpu", "kernels", "cpus"}
    (row,) = result["speed"]
    assert row["seconds"] == 0.6
    for figure in ("rtf", "fraction"):
        for path in ("one_by_one", "batch", "baseline"):
            assert row[f"{figure}_{path}"] > 0
    assert row["speedup_one_by_one"] > 0 and row["speedup_batch"] > 0
    assert row["max_abs_diff_vs_baseline"] <= 1e-5  # the fast paths give the original path's embeddings
    printed = capsys.readouterr().out
    assert f"backend={result['backend']}" in printed and result["machine"]["kernels"] in printed
