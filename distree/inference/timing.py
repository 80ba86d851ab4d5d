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
from distree.inference.step import DeviceStep
from distree.policies import NUM_EXITS


@dataclass
class TimingConfig:
    compacting_samples: int = 512  # samples timed in compacting mode
    batch_size: int = 128  # of compacting mode
    streaming_samples: int = 512  # samples timed one at a time
    repeats: int = 2  # the fastest repeat of each chunk counts
    machinery_samples: int = 64  # samples the exit machinery's cost is measured on (exit_machinery)
    threads: int = 1  # torch threads while timing


@dataclass
class Timing:
    streaming_ms: float  # mean wall-clock per sample, one sample at a time
    streaming_sem_ms: float  # its standard error over the samples timed
    streaming_p10_ms: float  # the spread of the per-sample times: 10th ...
    streaming_p90_ms: float  # ... and 90th percentile
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
        stream = 1e3 * torch.tensor(best[name, "streaming"], dtype=torch.float64)  # (S,) ms per sample
        compact, n_compact = sum(best[name, "compacting"]), min(config.compacting_samples, len(x))
        p10, p90 = torch.quantile(stream, torch.tensor([0.1, 0.9], dtype=torch.float64)).tolist()
        sem = stream.std().item() / len(stream) ** 0.5 if len(stream) > 1 else 0.0
        out[name] = Timing(stream.mean().item(), sem, p10, p90, 1e3 * compact / n_compact, n_compact / compact)
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


def exit_machinery(step: DeviceStep, x: torch.Tensor, config: TimingConfig = TimingConfig()) -> dict:
    """What an exit decision costs at B = 1 beyond the stages, against one bare exit-head call.

    On samples x (M, C, H, W), one at a time and interleaved, fastest of `repeats` each: the
    step's walk with thresholds that stop nobody (every stage and every exit's decision runs),
    the same stages with no head at all, and one bare `distree::exit_head` call at every
    exit's shape. The walk minus its stages is the exit machinery (the op calls, the host reads,
    the bookkeeping) of 7 exits; it is held against the 7 bare op calls, each the op the walk
    resolved for that head (`DeviceStep.kernels`) on that head's tensors, with no lookup around it.
    """
    never = DeviceStep(step.student, step.index, step.policy, step.policy.default_thresholds(), step.bias_share)
    parts = {"walk": [], "stages": [], "ops": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with torch.inference_mode():
            for xb in x.split(1):
                maps = step.student(xb)[1]  # 7 x (1, C_j, H_j, W_j)
                first = step.student.heads[0](maps[0])[0]
                t = {"walk": float("inf"), "stages": float("inf"), "ops": float("inf")}
                for _ in range(config.repeats):
                    began = time.perf_counter()
                    never.run(xb, torch.zeros(1, dtype=torch.long))
                    mid = time.perf_counter()
                    for _ in step.student.walk(xb):
                        pass
                    end = time.perf_counter()
                    for j, (k, h) in enumerate(zip(never.kernels, maps)):
                        k.ops.head(h, k.weight, k.bias, first if j else None, k.threshold)
                    done = time.perf_counter()
                    t = {"walk": min(t["walk"], mid - began), "stages": min(t["stages"], end - mid),
                         "ops": min(t["ops"], done - end)}
                for name, seconds in t.items():
                    parts[name].append(seconds)
    finally:
        torch.set_num_threads(threads)
    walk_s, stages_s, ops_s = (sum(v) / len(v) for v in parts.values())
    machinery = (walk_s - stages_s) / NUM_EXITS
    bare = ops_s / NUM_EXITS
    return {"walk_ms": 1e3 * walk_s, "stages_ms": 1e3 * stages_s, "machinery_us_per_exit": 1e6 * machinery,
            "bare_op_us": 1e6 * bare, "machinery_over_bare_op": machinery / bare}
