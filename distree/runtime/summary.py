"""The session's report, distributed.json, and its console table: the report's shape, in one place.

Rank 0 builds it from the aggregator's streams once every sample is answered: per policy the
summary of its run (accuracy, latency percentiles, exits, messages), its timeline and fault
phases, its adaptation where its thresholds followed a target, and beside the distributed
figures the single-process ones and the latency model's.
"""
import os
import sys
from pathlib import Path

import numpy as np
import torch

from distree.runtime import single_process
from distree.runtime.aggregator import Aggregator
from distree.runtime.config import ServeConfig
from distree.runtime.group import Session
from distree.runtime.policy_run import PolicyRun, accuracy, percentiles_ms
from distree.runtime.stream import Stream
from distree.runtime.timeline import loss_windows, phases, timeline, timeline_table
from distree.run_dir import DISTRIBUTED, class_names, jsonable_thresholds, read_config


def report_path(config: ServeConfig) -> Path:
    """Where the session's report goes: --report, else the run's distributed.json."""
    return Path(config.report or Path(config.run) / DISTRIBUTED)


def by_surviving_set(run: PolicyRun, fitted: bool) -> dict:
    """The degraded answers per set of devices that answered them ("0+2"): how many and which, their accuracy,
    which aggregator (the set's own where the run has them, else the healthy one over zeros) and
    under which settings (per device, the index on its path; -1 static)."""
    preds, labels = np.asarray(run.preds), np.asarray(run.labels)
    exits = np.asarray(run.exits).reshape(len(preds), -1)
    out = {}
    for k in np.flatnonzero(np.asarray(run.degraded, dtype=bool)):
        members = "+".join(str(i) for i in np.flatnonzero(exits[k] >= 0)) or "none"
        out.setdefault(members, []).append(int(k))
    return {members: {"answers": len(ks), "samples": ks, "accuracy": accuracy(preds[ks], labels[ks]),
                      "aggregator": "surviving set" if fitted and members != "none" else "zeros",
                      "settings": sorted({tuple(run.settings[k]) for k in ks}) if run.settings else []}
            for members, ks in sorted(out.items())}


def summarise(run: PolicyRun, warmup: int, fitted: bool = False) -> dict:
    """The report entry of one policy; the first `warmup` answers are left out of latency; fitted:
    whether the degraded answers came from surviving-set aggregators."""
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
        "degraded_by_set": by_surviving_set(run, fitted),
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


def adaptive_entry(stream: Stream) -> dict:
    """What a policy's adaptation did: its path, target, moves and shadow check."""
    spec, run, check, control = stream.spec, stream.run, stream.check, stream.control
    target = control.target_s
    return {"path": [jsonable_thresholds(t) for t in spec.path], "risk": spec.risk,
            "target_ms": None if target is None else target * 1e3, "target_x": control.config.target_x,
            "percentile": control.config.percentile,
            "moves": run.moves, "threshold_messages": len(run.moves), "shadow": check.summary(),
            "shadow_guard": run.guard, "shadow_samples": [[s, bool(d)] for s, d in run.shadow],
            "shadow_messages": run.shadow_messages,
            "set_grids": [{"members": list(members), "certified": int(g.certified.sum()), "combinations": g.certified.numel()}
                          for members, g in spec.set_grids.items()]}


def build_report(config: ServeConfig, session: Session, model, links: list, aggregator: Aggregator,
                 x: torch.Tensor, single: single_process.SingleProcess | None) -> dict:
    """The session's report (distributed.json) once aggregator has run every stream over samples x."""
    streams = aggregator.streams
    fitted = aggregator.surviving is not None
    policies = {s.run.name: summarise(s.run, config.warmup, fitted) for s in streams}
    for stream in streams:
        run = stream.run
        entry = policies[run.name]
        faults = aggregator.faults.windows(run.issued_s) + loss_windows(aggregator.lost_at, run.issued_s)
        entry.update(timeline=timeline(run, faults, config.timeline_window), phases=phases(run, faults),
                     latency_ms_per_sample=[1e3 * t for t in run.latency_s], settings_per_sample=run.settings)
        if stream.adapting:
            entry["adaptive"] = adaptive_entry(stream)
        elif stream.spec.on_loss:  # the settings certified per surviving set, and the moves to them
            entry["loss_settings"] = [{"members": list(members), "setting": stream.spec.loss_index(members),
                                       "thresholds": jsonable_thresholds(t)} for members, t in stream.spec.on_loss.items()]
            entry["moves"] = run.moves
    ref = x[:config.reference_samples]
    if single is not None:
        table = single_process.flop_table(model, ref)
        rate = single_process.compute_rate(model, table, ref)
        for stream in streams:
            run = stream.run
            entry, (ms, preds) = policies[run.name], single.result(stream.index)
            entry.update(single_process.simulated(table, run, stream.spec, aggregator.feature_dim, links, rate))
            entry["single_process_ms"] = ms
            entry["predictions_match_single_process"] = preds == run.preds[:len(preds)]
    # a FLOPs saving is a mean over samples, so the time saving it is held against is one too
    base = policies.get("last-exit", {}).get("latency_ms_measured", {}).get("mean")
    for entry in policies.values():
        mean = entry["latency_ms_measured"]["mean"]
        entry["latency_saving_measured"] = 1 - mean / base if base and mean is not None else None
    return {
        "run": str(config.run), "devices": session.num_devices, "backend": session.backend,
        "window": config.window, "split": None if config.images else config.split, "images": config.images,
        "samples": len(x), "links": [vars(link) for link in links], "faults": config.faults,
        "cpus": config.cpus, "aggregator_cpus": sorted(os.sched_getaffinity(0)),
        "lost_devices": {str(i): reason for i, reason in aggregator.lost.items()},
        "reference_samples": len(ref), "flops_per_s_measured": rate if single is not None else None,
        "chunk": config.chunk, "timeline_window": config.timeline_window, "latency_target_ms": config.latency_target_ms,
        "latency_target_x": config.latency_target_x, "percentile": config.percentile,
        "shadow_fraction": config.shadow_fraction if config.adapting else 0.0,
        "class_names": class_names(read_config(config.run)),
        "policies": policies,
        "targets": targets(policies),
    }


def targets(policies: dict) -> dict:
    """The issue's two ratios for DistrEE: latency over one student alone, latency saving over FLOPs saving."""
    d = policies.get("distree", {})
    median, one = d.get("latency_ms_measured", {}).get("median"), d.get("single_process_ms", {}).get("one_student_ms")
    out = {}
    if median is not None and one:
        out["distree_latency_over_one_student"] = median / one  # target <= 1.3
    if d.get("latency_saving_measured") is not None and d.get("flops_reduction"):
        out["latency_saving_over_flops_saving"] = d["latency_saving_measured"] / d["flops_reduction"]  # target >= 0.8
    return out


def print_table(report: dict, path: Path) -> None:
    print(f"{report['devices']} devices over {report['backend']}, {report['samples']} samples, "
          f"window {report['window']}; report: {path}")
    print(f"{'policy':<18}{'acc':>7}{'healthy':>8}{'degraded':>9}{'(acc)':>7}{'median ms':>11}{'p99 ms':>9}"
          f"{'sim ms':>8}{'per s':>8}{'msgs':>6}")
    fmt = lambda v, w, d=2: f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    for name, p in report["policies"].items():
        lat = p["latency_ms_measured"]
        print(f"{name:<18}{fmt(p['accuracy'], 7, 4)}{fmt(p['accuracy_healthy'], 8, 4)}{p['degraded']:>9}"
              f"{fmt(p['accuracy_degraded'], 7, 4)}{fmt(lat['median'], 11)}{fmt(lat['p99'], 9)}"
              f"{fmt(p.get('latency_ms_simulated', {}).get('median'), 8)}{fmt(p['throughput_per_s'], 8, 1)}"
              f"{p['uplink_messages_per_sample']:>6.1f}")
    for name, p in report["policies"].items():
        for members, d in p["degraded_by_set"].items():
            print(f"{name}: {d['answers']} answers by devices {members} alone, accuracy {fmt(d['accuracy'], 0, 4)}, "
                  f"by the {d['aggregator']} aggregator")
    for name, p in report["policies"].items():
        if "adaptive" in p or p["phases"]:
            print(timeline_table(name, p))
    for i, reason in report["lost_devices"].items():
        print(f"device {i} lost: {reason}")
    sys.stdout.flush()
