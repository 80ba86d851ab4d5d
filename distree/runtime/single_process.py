"""What the distributed runtime is held against: the same policies in one process, and the model.

* Single process: the inference engine's streaming mode (all N students one after another,
  one sample at a time) and one student alone (what one device computes), timed per sample in
  the aggregator's process between the distributed turns, with the engine's predictions for an
  equality check.
* Simulated: the latency model of docs/method.md (`distree.costs.simulated_latency`) fed with
  the exits the runtime measured, the emulated links, and this machine's measured compute rate
  (one student's last-exit FLOPs over its measured time), so model and measurement line up.
"""
import statistics
import time

import torch

from distree.costs import CostConfig, DeviceConfig, FlopTable, count_flops, flops_per_sample, simulated_latency
from distree.inference.engine import InferenceEngine
from distree.inference.evidence import bias_share
from distree.policies import LastExitPolicy
from distree.runtime.netem import LinkModel
from distree.plan import PolicySpec
from distree.runtime.policy_run import PolicyRun, percentiles_ms
from distree.inference.step import DeviceStep


class SingleProcess:
    """The plan's policies in this process, timed per sample: the engine (all N students) and student 0 alone.

    `time` is called between the distributed turns on the same samples (Aggregator.run), so
    both sides of every ratio meet the same machine load.
    """

    def __init__(self, model, plan: list[PolicySpec]):
        self.plan = plan
        self.engines = [InferenceEngine(model, s.policy, s.thresholds) for s in plan]
        self.alone = [DeviceStep(model.students[0], 0, s.policy, s.thresholds, bias_share(model)) for s in plan]
        self.engine_s, self.alone_s = [[] for _ in plan], [[] for _ in plan]
        self.preds = [[] for _ in plan]

    def time(self, x: torch.Tensor, lo: int, hi: int) -> None:
        """Time samples lo..hi-1 of x under every policy."""
        for p, spec in enumerate(self.plan):
            for s in range(lo, hi):
                t = time.perf_counter()
                logits = self.engines[p].run(x[s:s + 1], torch.tensor([s]), mode="streaming").logits  # (1, K)
                self.engine_s[p].append(time.perf_counter() - t)
                self.preds[p].append(int(logits.argmax()))
                if spec.policy.local:
                    t = time.perf_counter()
                    self.alone[p].run_one(x[s], s)
                    self.alone_s[p].append(time.perf_counter() - t)

    def result(self, p: int) -> tuple[dict, list]:
        """({engine_ms, one_student_ms}: medians per sample, the engine's predictions) of policy p."""
        ms = {"engine_ms": statistics.median(self.engine_s[p]) * 1e3}
        if self.alone_s[p]:
            ms["one_student_ms"] = statistics.median(self.alone_s[p]) * 1e3
        return ms, self.preds[p]


def compute_rate(model, table: FlopTable, x: torch.Tensor) -> float:
    """FLOP/s of this process running student 0 to its last exit, one sample at a time."""
    policy = LastExitPolicy()
    step = DeviceStep(model.students[0], 0, policy, policy.default_thresholds(), bias_share(model))
    times = []
    for s in range(len(x)):
        t = time.perf_counter()
        step.run_one(x[s], s)
        times.append(time.perf_counter() - t)
    return float(table.stage[0].sum() + table.head[0, -1]) / statistics.median(times)


def flop_table(model, x: torch.Tensor) -> FlopTable:
    return count_flops(model, x[:1])


def simulated(table: FlopTable, run: PolicyRun, spec: PolicySpec, feature_dim: int, links: list[LinkModel],
              flops_per_s: float) -> dict:
    """FLOPs and simulated latency of the answers every device contributed to (degraded ones left out)."""
    exits = torch.tensor([e for e in run.exits if min(e) >= 0], dtype=torch.long).T  # (N, B)
    if exits.numel() == 0:
        return {}
    devices = [DeviceConfig(flops_per_s, link.bandwidth_mbps * 1e6 or float("inf"), link.delay_ms / 1e3)
               for link in links]
    config = CostConfig(devices=devices, aggregator=DeviceConfig(flops_per_s))
    latency = simulated_latency(table, exits, spec.policy, feature_dim, config)  # (B,)
    flops = flops_per_sample(table, exits, spec.policy)  # (B,)
    return {"latency_ms_simulated": percentiles_ms(latency.tolist()),
            "flops_per_sample": float(flops.mean()),
            "flops_reduction": 1 - float(flops.mean()) / table.last_exit()}
