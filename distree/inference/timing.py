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

from distree.inference.engine import InferenceEngine


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
