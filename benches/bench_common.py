"""What every benchmark in benches/ shares: the device, the results table with its targets, and
the GPU timing helpers (CUDA-graph replay, the device's peak bandwidth).

A plain module rather than conftest.py, so that bench files import it by name; conftest.py
only prints what is collected here at the end of the run.
"""
import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":  # Triton runs on CPU tensors only in its interpreter, set before import
    os.environ.setdefault("TRITON_INTERPRET", "1")

# (shape, B, pass) -> {variant: (median seconds, bytes moved)}
RESULTS: dict[tuple, dict[str, tuple[float, int]]] = {}
# Lines of the GPU measurements (bandwidth, launches), printed after the table.
GPU_LINES: list[str] = []
# Lines of the exported students' latency table (test_bench_export.py), printed last.
EXPORT_LINES: list[str] = []

# (pass, B) -> {baseline: least speed-up of the fastest op backend over it}
TARGETS = {("fwd", 128): {"eager": 3.0, "compiled": 1.5}, ("fwd", 1): {"eager": 8.0, "compiled": 8.0},
           ("fwd+bwd", 128): {"eager": 2.0}, ("fwd+bwd", 1): {"eager": 2.0}}
BASELINES = ("eager", "compiled")


def sync() -> None:
    """Waits for the GPU, so that a timing covers the kernels and not only their launch."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def record(benchmark, key: tuple, name: str, nbytes: int) -> None:
    """Keeps a finished benchmark's median under `key` for the summary table."""
    median = benchmark.stats.stats.median
    benchmark.extra_info["GB/s"] = round(nbytes / median / 1e9, 1)
    RESULTS.setdefault(key, {})[name] = (median, nbytes)


def summary_lines() -> list[str]:
    """The results as a markdown table: each op backend against the baselines of its row."""
    lines = ["| shape (C,H,W) | B | pass | backend | median us | GB/s | x eager | x compiled | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (shape, B, kind), variants in sorted(RESULTS.items()):
        for name, (median, nbytes) in sorted(variants.items()):
            if name in BASELINES:
                continue
            ratios, verdicts = [], []
            for base in BASELINES:
                if base not in variants:
                    ratios.append("-")
                    continue
                r = variants[base][0] / median
                ratios.append(f"{r:.1f}")
                need = TARGETS.get((kind, B), {}).get(base)
                if need is not None:
                    verdicts.append(f"{'met' if r >= need else 'MISSED'} {base} >= {need:g}x")
            lines.append(f"| {shape} | {B} | {kind} | {name} | {median * 1e6:.1f} | {nbytes / median / 1e9:.1f} "
                         f"| {ratios[0]} | {ratios[1]} | {', '.join(verdicts) or '-'} |")
    return lines


def graph_seconds(call, copies: int, reps: int) -> float:
    """Seconds per call of call(i), i over `copies` buffer sets, replayed from one CUDA graph
    so that launch overhead does not count and the inputs do not stay in L2."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):
            call(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            call(i)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e-3 / (reps * copies)


def peak_bandwidth() -> tuple[float, float]:
    """(the memory's nominal peak, what a device-to-device copy reaches), bytes per second."""
    props = torch.cuda.get_device_properties(0)
    nominal = 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8  # DDR; kHz, bits
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    seconds = graph_seconds(lambda i: b.copy_(a), copies=1, reps=10)
    return nominal, 2 * a.numel() / seconds
