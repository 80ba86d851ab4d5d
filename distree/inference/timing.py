"""Wall-clock cost of the engine: per-sample latency when streaming, throughput when compacting.

The machine may be shared, so timing is interleaved finely: every chunk of samples (one sample
when streaming, one batch when compacting) is run by every engine in turn, and each engine's
time for a chunk is the fastest of a few repeats. Load then hits all engines alike, and it can
only ever add time. Timing runs on one thread by default: an edge device's one core, and on a
shared CPU two processes' OpenMP threads spin against each other by an order of magnitude.
"""
import time
from dataclasses import dataclass

import torch

from distree.costs import FlopTable
from distree.inference.engine import InferenceEngine
from distree.policies import NUM_EXITS


@dataclass
class TimingConfig:
    compacting_samples: int = 512  # samples timed in compacting mode
    batch_size: int = 128  # of compacting mode
    streaming_samples: int = 48  # samples timed one at a time
    repeats: int = 3  # the fastest repeat of each chunk counts
    threads: int = 1  # torch threads while timing


@dataclass
class Timing:
    streaming_ms: float  # mean wall-clock per sample, one sample at a time
    compacting_ms: float  # wall-clock per sample in compacting mode
    samples_per_s: float  # compacting throughput


def _chunks(x: torch.Tensor, index: torch.Tensor, config: TimingConfig) -> dict[str, list]:
    s, c = config.streaming_samples, config.compacting_samples
    return {"streaming": list(zip(x[:s].split(1), index[:s].split(1))),
            "compacting": list(zip(x[:c].split(config.batch_size), index[:c].split(config.batch_size)))}


def time_engines(engines: dict[object, InferenceEngine], x: torch.Tensor, index: torch.Tensor,
                 config: TimingConfig = TimingConfig()) -> dict[object, Timing]:
    """Times every engine on inputs x (M, C, H, W) with sample ids index (M,)."""
    chunks = _chunks(x, index, config)
    best = {(name, mode): [float("inf")] * len(parts) for name in engines for mode, parts in chunks.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        for _ in range(config.repeats):
            for mode, parts in chunks.items():
                for c, (xb, ib) in enumerate(parts):
                    for name, engine in engines.items():
                        began = time.perf_counter()
                        engine.run(xb, ib, mode)
                        best[name, mode][c] = min(best[name, mode][c], time.perf_counter() - began)
    finally:
        torch.set_num_threads(threads)
    out = {}
    for name in engines:
        stream, compact = sum(best[name, "streaming"]), sum(best[name, "compacting"])
        n_stream, n_compact = min(config.streaming_samples, len(x)), min(config.compacting_samples, len(x))
        out[name] = Timing(1e3 * stream / n_stream, 1e3 * compact / n_compact, n_compact / compact)
    return out


def stage_seconds(model, x: torch.Tensor, batch_size: int, config: TimingConfig = TimingConfig()):
    """Wall-clock seconds per sample of every stage and head, as a FlopTable of seconds.

    FLOPs misjudge time on a CPU: the first stages, wide in space and narrow in channels, are
    memory-bound and take a larger share of the time than of the FLOPs. Priced in seconds, the
    same cost arithmetic predicts the time an exit choice should save, so that what the exit
    machinery itself costs can be told apart.
    """
    n = len(model.students)
    stage, head = torch.zeros(n, NUM_EXITS, dtype=torch.float64), torch.zeros(n, NUM_EXITS, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with torch.inference_mode():
            for i, student in enumerate(model.students):
                for xb in x.split(batch_size):
                    stage_s, head_s = _fastest_parts(student, xb, config.repeats)  # (7,), (7,)
                    stage[i] += stage_s
                    head[i] += head_s
    finally:
        torch.set_num_threads(threads)
    return FlopTable(stage / len(x), head / len(x), 0.0)


def _fastest_parts(student, x: torch.Tensor, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seconds (7,) of each stage and of each head on batch x, fastest of `repeats`."""
    best_stage = torch.full((NUM_EXITS,), float("inf"), dtype=torch.float64)
    best_head = best_stage.clone()
    for _ in range(repeats):
        walk = student.walk(x)
        began = time.perf_counter()
        for j in walk:  # the stage runs inside the iteration
            mid = time.perf_counter()
            walk.head()
            end = time.perf_counter()
            best_stage[j] = min(best_stage[j], mid - began)
            best_head[j] = min(best_head[j], end - mid)
            began = time.perf_counter()
    return best_stage, best_head
