"""Wall-clock cost of the engine: per-sample latency when streaming, throughput when compacting.

The machine may be shared, so every policy is timed in alternation with last-exit and the
fastest of a few repeats counts: noise only ever adds time.
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
    repeats: int = 2  # the fastest repeat counts


@dataclass
class Timing:
    streaming_ms: float  # mean wall-clock per sample, one sample at a time
    compacting_ms: float  # wall-clock per sample in compacting mode
    samples_per_s: float  # compacting throughput


def _seconds(engine: InferenceEngine, x: torch.Tensor, index: torch.Tensor, mode: str, batch_size: int) -> float:
    began = time.perf_counter()
    for xb, ib in zip(x.split(batch_size), index.split(batch_size)):
        engine.run(xb, ib, mode)
    return time.perf_counter() - began


def time_engines(engines: dict[str, InferenceEngine], x: torch.Tensor, index: torch.Tensor,
                 config: TimingConfig = TimingConfig()) -> dict[str, Timing]:
    """Times each engine on inputs x (M, C, H, W) with sample ids index (M,), repeats interleaved."""
    xs, xc = x[:config.streaming_samples], x[:config.compacting_samples]
    best = {name: [float("inf"), float("inf")] for name in engines}
    for _ in range(config.repeats):
        for name, engine in engines.items():
            stream = _seconds(engine, xs, index[:len(xs)], "streaming", config.batch_size)
            compact = _seconds(engine, xc, index[:len(xc)], "compacting", config.batch_size)
            best[name] = [min(best[name][0], stream), min(best[name][1], compact)]
    return {name: Timing(1e3 * s / len(xs), 1e3 * c / len(xc), len(xc) / c) for name, (s, c) in best.items()}
