#!/usr/bin/env python3
"""Where the time of an embedding goes: each stage, and each layer of the frame body, against the matrix product.

Usage (from the repository root)::

    .venv/bin/python benchmarks/stages.py [--network dltresnet34] [--seconds 3] [--batch-sizes 1 8]
                                          [--rounds 9] [--threads N] [--backends eager onnxruntime] [--json FILE]

For ``--seconds`` of fresh random int16 audio, one recording at a time
(batch 1, as ``extractor(audio)``) and in batches (as ``embed_many``), it
times, interleaved in rounds, best of ``--rounds``:

- ``spectrogram``: checking the samples and computing the spectrogram
  (``pipeline.source`` and its frames);
- ``standardise``: the per-utterance standardisation into the float32 batch;
- ``frame body``: the runtime's ``forward_frames`` (everything before the pooling);
- ``head``: the pooling and the embedding layer
  (:func:`bob.learn.pytorch.runtimes.embedding_head` behind an optimised
  runtime, the network's own layers when eager);
- ``end to end``: ``pipeline.embed`` one by one, or ``pipeline.embed_many``;
- a 2048x2048 float32 matrix product (PyTorch), in the same rounds.

Each is reported in milliseconds per recording and as a fraction of the
matrix product's rate: the FLOPs of the network's forward (counted by
:class:`torch.utils.flop_counter.FlopCounterMode`, as in ``run.py``) per
second of the stage, over the matrix product's FLOP/s. The frame body's
fraction is its own rate; the end-to-end fraction is ``run.py``'s measure.

Then, for ONNX Runtime, the time of each layer of the frame body (each
residual block, each stem convolution with its folded BatchNorm), from the
session's own profiler (best of ``--rounds`` runs per node, profiling
included), with its FLOPs and its fraction of the matrix product's rate.

Timings move with the machine's load, printed with the results: compare the
ratios, which are measured within one process and one round.
"""
import argparse
import ast
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import add_network_option, cpu_model, timed  # noqa: E402
from bob.learn.pytorch import runtimes  # noqa: E402
from bob.learn.pytorch.embedding import standardized_batch  # noqa: E402
from bob.learn.pytorch.pipeline import EmbeddingPipeline  # noqa: E402

RATE = 16000
MATMUL_SIZE = 2048
STAGES = ("spectrogram", "standardise", "frame body", "head", "end to end")


# -- the machine --------------------------------------------------------------------------------------


def cpu_flags() -> List[str]:
    """The processor's AVX-512 and AMX feature flags from /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return [flag for flag in line.split(":", 1)[1].split() if flag.startswith(("avx512", "amx"))]
    except OSError:
        pass
    return []


def matmul_gflops(seconds: float) -> float:
    return 2 * MATMUL_SIZE**3 / seconds / 1e9


# -- the network's work ------------------------------------------------------------------------------


def flops_by_layer(network: torch.nn.Module, n_frames: int, batch: int) -> Tuple[int, Dict[str, int]]:
    """FLOPs of ``forward_emb`` on ``batch`` utterances of ``n_frames`` (FlopCounterMode), and per frame-body layer.

    A layer is a residual block (``layer1.0``) or a stem or head convolution
    (``conv1``); its FLOPs are those of its convolutions, ``2 * outputs *
    inputs per output``, which is what the counter counts for them.
    """
    per_layer: Dict[str, int] = {}

    def count(name: str) -> Callable:
        parts = name.split(".")
        layer = ".".join(parts[:2]) if parts[0].startswith("layer") else parts[0]

        def hook(module: torch.nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
            kh, kw = module.kernel_size
            work = 2 * output.numel() * (module.in_channels // module.groups) * kh * kw
            per_layer[layer] = per_layer.get(layer, 0) + work

        return hook

    handles = [m.register_forward_hook(count(n)) for n, m in network.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            network.forward_emb(torch.zeros(batch, 1, n_frames, 257))
    finally:
        for handle in handles:
            handle.remove()
    return counter.get_total_flops(), per_layer


def fresh_audio(seconds: float, count: int, seed: int) -> List[tuple]:
    rng = numpy.random.default_rng(seed)
    return [(RATE, (rng.standard_normal(int(seconds * RATE)) * 3000).astype(numpy.int16)) for _ in range(count)]


# -- stages -------------------------------------------------------------------------------------------


def stage_calls(pipeline: EmbeddingPipeline, audios: List[tuple]) -> Dict[str, Callable[[], object]]:
    """One callable per stage for one batch of equally long ``audios``, each fed by the previous stage's output."""
    network, runtime = pipeline.module, pipeline.runtime
    specs = [pipeline.source(audio).frames(0, pipeline.source(audio).n_frames) for audio in audios]
    batch = standardized_batch(specs)
    with torch.inference_mode():
        frames = runtime(torch.from_numpy(batch))

    def spectrogram():
        for audio in audios:
            source = pipeline.source(audio)
            source.frames(0, source.n_frames)

    def frame_body():
        with torch.inference_mode():
            runtime(torch.from_numpy(batch))

    def head():
        with torch.inference_mode():
            if runtime.name == "eager":
                network.em(torch.cat([frames.mean(2), frames.std(2)], 1).flatten(1)).norm(dim=1)
            else:
                runtimes.embedding_head(network, frames)

    def end_to_end():
        if len(audios) == 1:
            pipeline.embed(audios[0])
        else:
            pipeline.embed_many(audios, batch_size=len(audios))

    return {
        "spectrogram": spectrogram,
        "standardise": lambda: standardized_batch(specs),
        "frame body": frame_body,
        "head": head,
        "end to end": end_to_end,
    }


def measure_stages(
    pipelines: Dict[str, EmbeddingPipeline], seconds: float, batch: int, rounds: int
) -> Dict[str, Dict[str, float]]:
    """Best seconds of every stage of every runtime and of the matrix product, interleaved in ``rounds`` rounds."""
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    best: Dict[str, Dict[str, float]] = {name: dict.fromkeys(STAGES, float("inf")) for name in pipelines}
    best["matmul"] = {"matmul": float("inf")}
    for round_ in range(rounds + 1):  # round 0 warms up
        audios = fresh_audio(seconds, batch, seed=round_)
        names = list(pipelines)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]
        matmul = min(timed(lambda: a @ b) for _ in range(3))
        for name in names:
            for stage, call in stage_calls(pipelines[name], audios).items():
                elapsed = timed(call)
                if round_:
                    best[name][stage] = min(best[name][stage], elapsed)
        if round_:
            best["matmul"]["matmul"] = min(best["matmul"]["matmul"], matmul)
    return best


# -- layers of the frame body in ONNX Runtime ----------------------------------------------------------


def layer_of_outputs(model: bytes) -> Dict[str, str]:
    """Each node output of the exported frame body mapped to its layer: a residual block, or a stem layer.

    The layer comes from the exporter's ``pkg.torch.onnx.name_scopes``; a
    BatchNorm, folded into its convolution, counts as that convolution, and
    nodes of shared modules (the stem's ReLU) as the layer before them.
    """
    import onnx

    layers: Dict[str, str] = {}
    previous = "input"
    for node in onnx.load_from_string(model).graph.node:
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), [])
        names = [scope[len("network.") :] for scope in scopes if scope.startswith("network.")]
        if names and names[0].startswith("layer") and len(names) > 1:
            layer = names[1]
        elif names and names[0] != "relu":
            layer = names[0].replace("bn", "conv") if names[0].startswith("bn") else names[0]
        else:
            layer = previous
        previous = layer
        for output in node.output:
            layers[output] = layer
    return layers


def onnx_layer_times(
    network: torch.nn.Module, n_frames: int, batch: int, rounds: int, threads: int
) -> Tuple[Dict[str, float], float]:
    """Best microseconds of each layer's nodes in a profiled ONNX Runtime session like the package's.

    Also returns the best seconds of the matrix product, timed between the profiled runs.
    """
    import onnxruntime

    from bob.learn.pytorch.onnx_export import INPUT_NAME, export_frame_body

    model = export_frame_body(network, 257)
    layers = layer_of_outputs(model)
    with tempfile.TemporaryDirectory() as folder:
        options = runtimes.onnxruntime_session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        array = numpy.random.default_rng(0).standard_normal((batch, 1, n_frames, 257)).astype(numpy.float32)
        a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
        matmul = float("inf")
        for _ in range(rounds + 1):
            session.run(None, {INPUT_NAME: array})
            matmul = min(matmul, timed(lambda: a @ b))
        events = json.loads(Path(session.end_profiling()).read_text())
    runs: Dict[str, List[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            runs.setdefault(event["name"], []).append(event["dur"])
    per_layer: Dict[str, float] = {}
    for name, durations in runs.items():
        output = name[: -len("_kernel_time")]
        output = output[: -len("_nchwc")] if output.endswith("_nchwc") else output
        layer = layers.get(output, "layout reorders")
        per_layer[layer] = per_layer.get(layer, 0.0) + min(durations[1:] or durations)
    return per_layer, matmul


# -- report -------------------------------------------------------------------------------------------


def print_stages(report: Dict, batch: int) -> None:
    rows = report["stages"][str(batch)]
    gflops = matmul_gflops(rows["matmul"]["matmul"])
    total, body = report["flops"][str(batch)]
    print(
        f"\n{report['seconds']:g} s recordings, batch {batch} ({'one-by-one calls' if batch == 1 else 'embed_many'}); "
        f"matrix product {gflops:.0f} GFLOP/s; network {total / batch / 1e9:.2f} GFLOP per recording"
    )
    header = f"{'runtime':<12} {'stage':<12} {'ms/rec':>8} {'share':>6} {'fraction':>9}"
    print(header)
    print("-" * len(header))
    for name, stages in rows.items():
        if name == "matmul":
            continue
        for stage in STAGES:
            seconds = stages[stage]
            share = seconds / stages["end to end"]
            flops = {"frame body": body, "end to end": total}.get(stage)
            fraction = f"{flops / seconds / 1e9 / gflops:9.2f}" if flops else f"{'':>9}"
            print(f"{name:<12} {stage:<12} {seconds * 1000 / batch:8.2f} {share:6.2f} {fraction}")
    print(
        "share: of the end-to-end time (the stages are timed apart, so they need not add up to 1); fraction: "
        "FLOPs of the frame body (frame body) or of the network (end to end) per second, over the matrix product's"
    )


def print_layers(report: Dict, batch: int) -> None:
    layers = report["layers"].get(str(batch))
    if not layers:
        return
    gflops = matmul_gflops(report["layer_matmul"][str(batch)])
    flops = report["layer_flops"][str(batch)]
    total = sum(layers.values())
    print(
        f"\nONNX Runtime, layers of the frame body, batch {batch} (session profiler, best of {report['rounds']} runs; "
        f"matrix product between them {gflops:.0f} GFLOP/s)"
    )
    header = f"{'layer':<16} {'us':>8} {'share':>6} {'GFLOP':>7} {'fraction':>9}"
    print(header)
    print("-" * len(header))
    for layer, micros in layers.items():
        work = flops.get(layer, 0)
        fraction = f"{work / (micros * 1e-6) / 1e9 / gflops:9.2f}" if work else f"{'':>9}"
        print(f"{layer:<16} {micros:8.0f} {micros / total:6.2f} {work / 1e9:7.3f} {fraction}")
    body = sum(flops.get(layer, 0) for layer in layers)
    print(f"{'all':<16} {total:8.0f} {1:6.2f} {body / 1e9:7.3f} {body / (total * 1e-6) / 1e9 / gflops:9.2f}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_network_option(parser)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the recordings")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="recordings per measurement")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument(
        "--backends", nargs="+", default=["eager", "onnxruntime"], choices=[n for n in runtimes.RUNTIMES if n != "auto"]
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    record = args.network
    network = record.build().eval()
    network.net_type = "emb"
    bins = record.front_end.bins
    pipelines = {name: EmbeddingPipeline(record, network, runtimes.build_runtime(network, name, bins)) for name in args.backends}
    n_frames = record.front_end.n_frames(int(args.seconds * RATE))
    report: Dict = {"seconds": args.seconds, "rounds": args.rounds, "stages": {}, "flops": {}, "layers": {}, "layer_flops": {}, "layer_matmul": {}}
    for batch in args.batch_sizes:
        total, per_layer = flops_by_layer(network, n_frames, batch)
        report["flops"][str(batch)] = (total, sum(per_layer.values()))
        report["layer_flops"][str(batch)] = per_layer
        report["stages"][str(batch)] = measure_stages(pipelines, args.seconds, batch, args.rounds)
        if "onnxruntime" in pipelines:
            layers, matmul = onnx_layer_times(network, n_frames, batch, args.rounds, args.threads)
            report["layers"][str(batch)], report["layer_matmul"][str(batch)] = layers, matmul
    load_after = os.getloadavg()
    print(
        f"{cpu_model()}, {os.cpu_count()} CPUs, {' '.join(cpu_flags()) or 'no AVX-512'}; torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()} kernels), {torch.get_num_threads()} threads; network "
        f"{record.name}; 'auto' here: {runtimes.auto_runtime()[0]}"
    )
    print(
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; best of {args.rounds} interleaved rounds"
    )
    for batch in args.batch_sizes:
        print_stages(report, batch)
        print_layers(report, batch)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
