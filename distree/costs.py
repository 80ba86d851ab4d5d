"""What an exit choice costs: FLOPs counted by torch.utils.flop_counter, and simulated latency.

FLOPs are counted once per model on one sample, per student and stage, per head and for the
aggregator; a policy's cost per sample then follows from its exits alone. Simulated latency
follows docs/method.md ("Costs"): a local policy pays each device's compute to its exit plus one message,
and waits for the slowest device; a per-exit policy pays, at every decision stage, the slowest
device's compute since the last decision plus one message from every device.
"""
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from distree.policies import NUM_EXITS, Policy


@dataclass
class DeviceConfig:
    """A Raspberry-Pi-class edge device and its link, by default."""

    flops_per_s: float = 1e9
    bandwidth_bps: float = 10e6  # bits per second
    latency_s: float = 5e-3  # per message


@dataclass
class CostConfig:
    """One device per student (empty: all DeviceConfig()), and the aggregator's device."""

    devices: list[DeviceConfig] = field(default_factory=list)
    aggregator: DeviceConfig = field(default_factory=DeviceConfig)
    bytes_per_value: int = 4  # float32 evidence

    def device(self, i: int) -> DeviceConfig:
        return self.devices[i] if self.devices else DeviceConfig()


@dataclass
class FlopTable:
    """FLOPs per sample of every part of the model."""

    stage: torch.Tensor  # (N, 7) stage j of student i
    head: torch.Tensor  # (N, 7) exit head j of student i
    aggregator: float

    def last_exit(self) -> float:
        """FLOPs per sample without early exit: all stages, the last heads, the aggregator."""
        return float(self.stage.sum() + self.head[:, -1].sum() + self.aggregator)


def _exit_head_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """The fused head's projection, counted as flop_counter counts a matmul: 2 * B * C * D."""
    if weight_shape is None:
        return 0
    return 2 * x_shape[0] * weight_shape[0] * weight_shape[1]


def _custom_flops() -> dict:
    ops = getattr(torch.ops, "distree", None)
    names = ("exit_head", "exit_head_triton")
    return {getattr(ops, n): _exit_head_flops for n in names if ops is not None and hasattr(ops, n)}


def _count(fn, *args) -> tuple[int, object]:
    with FlopCounterMode(display=False, custom_mapping=_custom_flops()) as counter:
        out = fn(*args)
    return counter.get_total_flops(), out


@torch.no_grad()
def count_flops(model, sample: torch.Tensor) -> FlopTable:
    """FLOPs of every stage, head and the aggregator of `model` on one sample (1, C, H, W)."""
    n = len(model.students)
    stage, head = torch.zeros(n, NUM_EXITS), torch.zeros(n, NUM_EXITS)
    sent = []
    for i, student in enumerate(model.students):
        walk = student.walk(sample)
        stages = iter(walk)
        for j in range(NUM_EXITS):
            stage[i, j], _ = _count(next, stages)
            head[i, j], (u, _, _) = _count(walk.head)
        sent.append(u)
    agg, _ = _count(model.aggregate, torch.stack(sent))
    return FlopTable(stage.double(), head.double(), float(agg))


def student_flops(table: FlopTable, exits: torch.Tensor, policy: Policy) -> torch.Tensor:
    """FLOPs (N, B) each student spends per sample to reach its exit (N, B) and decide there."""
    stages = table.stage.cumsum(1).gather(1, exits)  # (N, B)
    if not policy.exits_early:
        return stages + table.head[:, -1:]  # only the last head runs
    return stages + table.head.cumsum(1).gather(1, exits)  # every head up to the exit


def flops_per_sample(table: FlopTable, exits: torch.Tensor, policy: Policy) -> torch.Tensor:
    """Total FLOPs (B,) per sample: all students to their exits plus the aggregator."""
    per_exit_aggregations = exits[0] if not policy.local else 1  # per-exit policies aggregate at exits 2..e
    return student_flops(table, exits, policy).sum(0) + table.aggregator * per_exit_aggregations


def _message_s(device: DeviceConfig, num_values: int, config: CostConfig) -> float:
    return num_values * config.bytes_per_value * 8 / device.bandwidth_bps + device.latency_s


def simulated_latency(table: FlopTable, exits: torch.Tensor, policy: Policy, num_values: int,
                      config: CostConfig = CostConfig()) -> torch.Tensor:
    """Simulated seconds (B,) per sample; num_values = K, the floats in one message."""
    n = exits.shape[0]
    rate = torch.tensor([config.device(i).flops_per_s for i in range(n)], dtype=torch.float64)  # (N,)
    message = torch.tensor([_message_s(config.device(i), num_values, config) for i in range(n)],
                           dtype=torch.float64)  # (N,)
    aggregate_s = table.aggregator / config.aggregator.flops_per_s
    if policy.local:
        device_s = student_flops(table, exits, policy) / rate[:, None] + message[:, None]  # (N, B)
        return device_s.max(0).values + aggregate_s
    step = (table.stage + table.head) / rate[:, None]  # (N, 7) seconds per stage and head
    step[:, 1] += step[:, 0]  # exit 1 is no decision point: its work is paid with exit 2's
    stage_s = (step[:, 1:] + message[:, None]).max(0).values + aggregate_s  # (6,) per decision exit 2..7
    return stage_s.cumsum(0)[exits[0] - 1]  # (B,); all students share the exit
