"""One process of a distributed session: join the group, take the role of this rank, report.

This is the entry point of every rank (`python -m distree.serve`, `python -m distree.runtime.rank`,
torchrun, and the processes `distree deploy` starts). Every rank leaves through os._exit once
its output is flushed: a gloo receive cannot be cancelled, so a receive still posted to a peer
that stalled or died would make a normal interpreter exit (and destroy_process_group) wait for
it forever.

Every rank loads the same run and builds the same plan from the same arguments. Rank 0 is the
aggregator, rank i + 1 runs student i. The aggregator writes the JSON report and prints a table.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

from distree.data import SIZE
from distree.errors import DistreeError, check_counts
from distree.inference.evidence import bias_share
from distree.runtime import single_process
from distree.policies import make_policy
from distree.runtime.adaptive import AdaptConfig
from distree.runtime.aggregator import Aggregator, Deadlines
from distree.runtime.config import ServeConfig, add_serve_arguments, config_from_args
from distree.runtime.device import Device, run_device
from distree.runtime.faults import parse_fault
from distree.runtime.group import AGGREGATOR_RANK, Session, init_group
from distree.runtime.netem import link_models
from distree.runtime.onnx_device import check_artifacts, onnx_steps
from distree.runtime.predictions import check_replaceable, predictions_path, write_predictions
from distree.plan import make_plan, parse_thresholds
from distree.runtime.plan import with_paths
from distree.runtime.summary import summarise
from distree.runtime.timeline import phases, timeline, timeline_table
from distree.inference.step import DeviceStep
from distree.samples import load_samples
from distree.run_dir import DISTRIBUTED, class_names, jsonable_thresholds, load_student_model, read_config

TIMELINE_PLOT = "adaptive_timeline.png"  # beside the report, under a latency target

def serve(config: ServeConfig) -> int:
    """This rank's part of the session; the process exit code."""
    check_adaptive_options(config)  # before joining: under torchrun a bad option must not wait for peers
    session = init_group(config.backend, config.connect_timeout_s)
    torch.set_num_threads(config.threads)
    run_config = read_config(config.run)
    n = run_config["students"]["num_students"]
    if session.num_devices != n:
        raise DistreeError(f"the run has {n} students but {session.num_devices} device ranks were started; "
                           f"start {n + 1} processes")
    plan, faults, links = check_options(config, n)
    shape = run_config["data_shape"]
    size = shape.get("image_size", SIZE)  # runs from before image sizes were kept are 32x32
    input_shape = (shape["in_channels"], size, size)
    if session.rank != AGGREGATOR_RANK:
        i = session.rank - 1
        steps, paths, full = device_steps(config, plan, i, session)
        return run_device(Device(session, i, steps, input_shape, links[i], faults, config.dead_after_s, paths, full))
    model = load_student_model(config.run)
    deadlines = Deadlines(fixed_s=config.deadline_ms / 1e3, factor=config.deadline_factor,
                          dead_after_s=config.dead_after_s)
    adapt = None if not adapting(config) else AdaptConfig(
        None if config.latency_target_ms is None else config.latency_target_ms / 1e3, config.latency_target_x,
        percentile=config.percentile, window=config.adapt_window, shadow_fraction=config.shadow_fraction,
        warmup=config.warmup)
    aggregator = Aggregator(session, model, plan, deadlines, config.window, faults, adapt)
    samples = load_samples(config.run, config.split, config.sample_count(), config.images)
    x, labels = samples.x, samples.labels  # (S, C, H, W), (S,)
    single = single_process.SingleProcess(model, plan) if config.reference_samples > 0 else None

    def between(lo: int, hi: int) -> None:  # the same samples in one process, under the same load
        if single is not None and lo < config.reference_samples:
            single.time(x, lo, min(hi, config.reference_samples))

    runs = aggregator.run(x, labels, config.chunk, between)
    aggregator.shutdown(torch.Size(input_shape).numel())
    report = build_report(config, session, model, plan, links, aggregator, runs, x, single)
    if config.images:  # which file each sample is: predictions[k] answers files[k]
        report.update(files=samples.files, skipped_files=[{"file": f, "why": why} for f, why in samples.skipped])
    path = Path(config.report or Path(config.run) / DISTRIBUTED)
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    if adapting(config):
        from distree.report.timeline_plot import adaptive_timeline  # matplotlib only where a plot is drawn

        adaptive_timeline(report, path.parent / TIMELINE_PLOT)
    print_table(report, path)
    if config.images:  # a user's own images: the answer per file
        write_predictions(predictions_path(path, config.predictions), samples.files, samples.skipped, runs,
                          labels.tolist(), class_names(run_config))
    return 0


def device_steps(config: ServeConfig, plan: list, i: int, session: Session):
    """What device i computes each policy of the plan with (its PyTorch student, or its ONNX file),
    the plan's threshold paths and, where a path adapts, the walk to exit 7 for shadow samples."""
    paths = [s.path for s in plan]
    if config.device_backend == "onnxruntime":  # thresholds baked in: check_options allows no path
        return onnx_steps(config.artifacts, plan, i, config.threads), paths, None  # students.pt is not read
    model = load_student_model(config.run)
    student = model.students[i].to(session.device)  # on its GPU under NCCL; the aggregator's sums stay on the CPU
    steps = [DeviceStep(student, i, s.policy, s.thresholds, bias_share(model)) for s in plan]
    last = make_policy("last-exit")
    full = DeviceStep(student, i, last, last.default_thresholds(), bias_share(model)) if any(
        p is not None for p in paths) else None  # the shadows' walk to exit 7
    return steps, paths, full


def check_options(config: ServeConfig, n: int):
    """The plan, faults and links config asks for, or a DistreeError before any process starts."""
    check_adaptive_options(config)
    plan = make_plan(config.policies, parse_thresholds(config.thresholds), config.run, config.setting)
    if adapting(config):
        plan = with_paths(plan, config.run, config.threshold_path, config.path_steps, config.consistency_epsilon,
                          delta=0.1, num_devices=n, served=config.setting)
    faults = [parse_fault(f, n) for f in config.faults]
    links = link_models(config.link_delay_ms, config.link_mbps, config.link_jitter_ms, n)
    if config.device_backend == "onnxruntime":
        if adapting(config):
            raise DistreeError("a latency target moves each device's thresholds, and an exported ONNX student has "
                               "its thresholds inside: use --device-backend torch with --latency-target-ms")
        check_artifacts(config.artifacts, plan, n)
    elif config.artifacts is not None:
        raise DistreeError("--artifacts is for --device-backend onnxruntime")
    if min(config.window, config.chunk) < 1 or config.deadline_ms < 0 or config.dead_after_s <= 0:
        raise DistreeError("--window and --chunk must be >= 1, --deadline-ms >= 0, --dead-after-s > 0")
    check_counts(samples=config.samples or 0, reference_samples=config.reference_samples, warmup=config.warmup)
    if config.images:
        check_replaceable(predictions_path(Path(config.report or Path(config.run) / DISTRIBUTED), config.predictions))
    return plan, faults, links


def adapting(config: ServeConfig) -> bool:
    return config.latency_target_ms is not None or config.latency_target_x is not None


def check_adaptive_options(config: ServeConfig) -> None:
    target, x = config.latency_target_ms, config.latency_target_x
    if target is not None and not target > 0:
        raise DistreeError(f"--latency-target-ms must be > 0, got {target:g}")
    if x is not None and (not x > 0 or target is not None):
        raise DistreeError(f"--latency-target-x must be > 0 and not given with --latency-target-ms, got {x:g}")
    if not 0 < config.percentile < 100:
        raise DistreeError(f"--percentile must be in (0, 100), got {config.percentile:g}")
    if not 0 <= config.shadow_fraction <= 1:
        raise DistreeError(f"--shadow-fraction must be in [0, 1], got {config.shadow_fraction:g}")
    if not 0 < config.consistency_epsilon < 1:
        raise DistreeError(f"--consistency-epsilon must be in (0, 1), got {config.consistency_epsilon:g}")
    if min(config.path_steps, config.adapt_window) < 2 or config.timeline_window < 1:
        raise DistreeError("--path-steps and --adapt-window must be >= 2, --timeline-window >= 1")


def adaptive_entry(spec, run, check, control) -> dict:
    """What a policy's adaptation did: its path, target, moves and shadow check."""
    target = control.target_s
    return {"path": [jsonable_thresholds(t) for t in spec.path], "risk": spec.risk,
            "target_ms": None if target is None else target * 1e3, "target_x": control.config.target_x,
            "percentile": control.config.percentile,
            "moves": run.moves, "threshold_messages": len(run.moves), "shadow": check.summary(),
            "shadow_guard": run.guard, "shadow_samples": [[s, bool(d)] for s, d in run.shadow],
            "shadow_messages": run.shadow_messages}


def build_report(config, session: Session, model, plan, links, aggregator, runs, x, single) -> dict:
    policies = {run.name: summarise(run, config.warmup) for run in runs}
    for p, (spec, run) in enumerate(zip(plan, runs)):
        entry, faults = policies[run.name], aggregator.fault_windows(run)
        entry.update(timeline=timeline(run, faults, config.timeline_window), phases=phases(run, faults),
                     latency_ms_per_sample=[1e3 * t for t in run.latency_s], settings_per_sample=run.settings)
        if aggregator.control[p] is not None:
            entry["adaptive"] = adaptive_entry(spec, run, aggregator.shadow[p], aggregator.control[p])
    ref = x[:config.reference_samples]
    if single is not None:
        table = single_process.flop_table(model, ref)
        rate = single_process.compute_rate(model, table, ref)
        for p, (spec, run) in enumerate(zip(plan, runs)):
            entry, (ms, preds) = policies[run.name], single.result(p)
            entry.update(single_process.simulated(table, run, spec, aggregator.feature_dim, links, rate))
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
        "lost_devices": {str(i): reason for i, reason in aggregator.lost.items()},
        "reference_samples": len(ref), "flops_per_s_measured": rate if single is not None else None,
        "chunk": config.chunk, "timeline_window": config.timeline_window, "latency_target_ms": config.latency_target_ms,
        "latency_target_x": config.latency_target_x, "percentile": config.percentile,
        "shadow_fraction": config.shadow_fraction if adapting(config) else 0.0,
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
    print(f"{'policy':<18}{'acc':>7}{'degraded':>9}{'median ms':>11}{'p99 ms':>9}{'sim ms':>8}{'per s':>8}"
          f"{'msgs':>6}")
    for name, p in report["policies"].items():
        lat = p["latency_ms_measured"]
        fmt = lambda v, w, d=2: f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
        print(f"{name:<18}{fmt(p['accuracy'], 7, 4)}{p['degraded']:>9}{fmt(lat['median'], 11)}{fmt(lat['p99'], 9)}"
              f"{fmt(p.get('latency_ms_simulated', {}).get('median'), 8)}{fmt(p['throughput_per_s'], 8, 1)}"
              f"{p['uplink_messages_per_sample']:>6.1f}")
    for name, p in report["policies"].items():
        if "adaptive" in p or p["phases"]:
            print(timeline_table(name, p))
    for i, reason in report["lost_devices"].items():
        print(f"device {i} lost: {reason}")
    sys.stdout.flush()


def run_rank(config: ServeConfig) -> int:
    """serve(config) with a user's error reported as one line; the exit code."""
    try:
        return serve(config)
    except DistreeError as err:
        print(f"error: rank {os.environ.get('RANK', '?')}: {err}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distree.serve", description="One rank of a distributed session")
    add_serve_arguments(parser)
    return run_rank(config_from_args(parser.parse_args(argv)))


def exit_rank(argv=None) -> None:
    """main(), then os._exit with its code once stdout and stderr are flushed."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_rank()
