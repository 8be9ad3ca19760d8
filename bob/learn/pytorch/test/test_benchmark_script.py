"""The benchmark scripts still run and report what the docs' figures come from (no timing is checked)."""
import importlib.util
import json

import pytest

from .conftest import REPO

from bob.learn.pytorch import runtimes

BENCHMARKS = REPO / "benchmarks"


def load_script(name):
    """The benchmark script ``benchmarks/<name>.py`` as a module (skipped where the scripts are not shipped)."""
    path = BENCHMARKS / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"benchmarks/{name}.py is not shipped in installed packages")
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark_module():
    return load_script("run")


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


def test_runtimes_benchmark_checks_and_times_every_installed_runtime(tmp_path, capsys):
    report = tmp_path / "runtimes.json"
    load_script("runtimes").main(["--durations", "0.5", "--rounds", "1", "--json", str(report)])
    result = json.loads(report.read_text())
    installed = runtimes.available_runtimes()
    (row,) = result["rows"]
    assert row["frames"] == 50 and sorted(row["ms"]) == sorted(installed) and not row["excluded"]
    assert all(0 < ms for ms in row["ms"].values())
    assert all(difference < 1e-4 for difference in row["relative_difference"].values())
    assert result["auto_2_0"] == ("onnxruntime" if "onnxruntime" in installed else "eager")
    assert result["auto_1_0"] == ("onnxruntime" if result["machine"]["avx512"] else "mnn")
    printed = capsys.readouterr().out
    assert "2.0 auto here: " + result["auto_2_0"] in printed and "mnn/1.0 auto" in printed


def test_first_use_benchmark_pairs_each_command_with_the_2019_style_script(drn_file, tmp_path, capsys):
    report = tmp_path / "firstuse.json"
    arguments = ["--pairs", "1", "--seconds", "1", "--model", str(drn_file), "--variants", "eager", "--json", str(report)]
    load_script("firstuse").main(arguments)
    result = json.loads(report.read_text())
    assert result["machine"]["instruction_set"] in ("AVX-512", "AVX2", "neither AVX-512 nor AVX2")
    assert sorted(result["times"]) == ["eager", "script-2019"] and all(len(times) == 1 for times in result["times"].values())
    assert result["rows"]["script-2019"]["ratio"] == 1.0
    assert result["rows"]["eager"]["ratio"] == result["times"]["eager"][0] / result["times"]["script-2019"][0]
    printed = capsys.readouterr().out.splitlines()
    assert f"({result['machine']['instruction_set']})" in printed[0] and "load average" in printed[0]
    assert printed[-1].startswith("eager ")


def test_cohort_benchmark_compares_chunked_and_whole_matrix(tmp_path, capsys):
    report = tmp_path / "cohort.json"
    load_script("cohort").main(["--probes", "300", "--cohort", "200", "--top-n", "20", "--chunk-rows", "64",
                                "--json", str(report)])
    result = json.loads(report.read_text())
    assert result["max_difference"] < 1e-12 and result["chunked_peak_mib"] < result["baseline_peak_mib"]
    assert "ratios chunked/whole: time" in capsys.readouterr().out
@pytest.mark.skipif(not runtimes.onnxruntime_available(), reason='needs ".[fast]"')
def test_stages_benchmark_times_every_stage_and_maps_every_layer(tmp_path, capsys):
    report = tmp_path / "stages.json"
    load_script("stages").main(["--seconds", "1", "--batch-sizes", "1", "2", "--rounds", "1", "--json", str(report)])
    result = json.loads(report.read_text())
    for batch in ("1", "2"):
        stages = result["stages"][batch]
        assert sorted(stages) == ["eager", "matmul", "onnxruntime"]
        assert all(seconds > 0 for name in ("eager", "onnxruntime") for seconds in stages[name].values())
        total, body = result["flops"][batch]
        layer_flops = result["layer_flops"][batch]
        assert sum(layer_flops.values()) == body and 0.95 * total < body <= total  # the head's FLOPs are tiny
        layers = result["layers"][batch]
        # every profiled node lands in a layer that has convolutions, or among the layout reorders
        assert set(layers) - {"maxpool", "layout reorders"} == set(layer_flops)
    printed = capsys.readouterr().out
    assert "'auto' here: " + runtimes.auto_runtime()[0] in printed and "layer3.5" in printed
