"""What the aggregator records per policy over the stream, and the statistics read off those records.

Latency is per sample, from the moment the aggregator hands the sample to the devices to the
moment it answers; with a window of W samples in flight it includes up to W - 1 samples of
queueing, so the latency figures are taken with W = 1 and throughput with W > 1 (see serve).
"""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PolicyRun:
    """The answers of one policy over the stream, and what the links carried for it."""

    name: str
    local: bool
    thresholds: list
    num_devices: int
    labels: list = field(default_factory=list)  # -1 where unknown (image folders)
    preds: list = field(default_factory=list)
    degraded: list = field(default_factory=list)  # answered without some device's evidence
    exits: list = field(default_factory=list)  # per answer, per device: 0-based exit, -1 if missing
    latency_s: list = field(default_factory=list)
    compute_s: list = field(default_factory=list)  # of the slowest device, summed over rounds
    round_s: list = field(default_factory=list)  # rounds every live device answered in time (for deadlines)
    busy_s: float = 0.0  # time spent streaming this policy
    uplink_messages: int = 0
    uplink_bytes: int = 0
    downlink_decisions: int = 0
    rejected: int = 0  # malformed messages dropped
    stale: int = 0  # well-formed messages that came after their sample was answered
    deadline_s: float = 0.0  # the last deadline in force
    settings: list = field(default_factory=list)  # per answer, per device: its setting on the path (-1: static)
    issued_s: list = field(default_factory=list)  # per sample: perf_counter time it left the aggregator
    moves: list = field(default_factory=list)  # THRESHOLDS sent: {"sample", "device", "setting", "reason"}
    shadow: list = field(default_factory=list)  # (sample, whether the answer differs from exit 7's)
    shadow_messages: int = 0
    guard: list = field(default_factory=list)  # the shadow check's step backs

    def record(self, label: int, pred: int, exits: list, latency: float, compute: float) -> None:
        self.labels.append(label)
        self.preds.append(pred)
        self.exits.append(exits)
        self.degraded.append(min(exits) < 0)
        self.latency_s.append(latency)
        self.compute_s.append(compute)


def percentiles_ms(seconds: list) -> dict:
    if not seconds:
        return {"median": None, "p95": None, "p99": None, "mean": None}
    ms = np.asarray(seconds) * 1e3
    return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float | None:
    known = labels >= 0
    return float((preds[known] == labels[known]).mean()) if known.any() else None

