"""What the aggregator records per policy, and the JSON summary it writes.

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


def summarise(run: PolicyRun, warmup: int) -> dict:
    """The report entry of one policy; the first `warmup` answers are left out of latency."""
    preds, labels = np.asarray(run.preds), np.asarray(run.labels)
    degraded, exits = np.asarray(run.degraded, dtype=bool), np.asarray(run.exits).reshape(len(preds), -1)
    n = max(len(preds), 1)
    histogram = [[int((exits[:, i] == j).sum()) for j in range(7)] for i in range(run.num_devices)]
    return {
        "local": run.local,
        "thresholds": [v if np.isfinite(v) else ("inf" if v > 0 else "-inf") for v in run.thresholds],
        "samples": len(preds),
        "accuracy": accuracy(preds, labels),
        "accuracy_healthy": accuracy(preds[~degraded], labels[~degraded]),
        "accuracy_degraded": accuracy(preds[degraded], labels[degraded]),
        "degraded": int(degraded.sum()),
        "latency_ms_measured": percentiles_ms(run.latency_s[warmup:]),
        "device_compute_ms": percentiles_ms(run.compute_s[warmup:]),
        "overhead_ms": percentiles_ms(list(np.subtract(run.latency_s, run.compute_s)[warmup:])),  # messages, waits
        "throughput_per_s": len(preds) / run.busy_s if run.busy_s > 0 else None,
        "deadline_ms": run.deadline_s * 1e3,
        "mean_exit": [float(exits[exits[:, i] >= 0, i].mean() + 1) if (exits[:, i] >= 0).any() else None
                      for i in range(run.num_devices)],  # 1-based, over the answers the device made
        "exit_histogram": histogram,  # per device, counts at exits 1..7
        "uplink_messages_per_sample": run.uplink_messages / n,
        "uplink_bytes_per_sample": run.uplink_bytes / n,
        "decisions_per_sample": run.downlink_decisions / n,
        "rejected_messages": run.rejected,
        "stale_messages": run.stale,
        "predictions": run.preds,
        "degraded_samples": [int(k) for k in np.flatnonzero(degraded)],
    }
