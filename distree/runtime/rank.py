"""One process of a distributed session: join the group, take the role of this rank.

`run_rank` is what every rank runs (`python -m distree.serve` under torchrun, and the processes
`distree deploy` starts). Every rank loads the same run and builds the same plan from the same
arguments. Rank 0 is the aggregator: it streams the samples, then writes the report and prints
its table (runtime/summary.py); rank i + 1 runs student i.
"""
import gc
import json
import os
import sys

import torch

from distree.data import SIZE
from distree.errors import DistreeError, check_counts
from distree.inference.evidence import bias_share
from distree.runtime import single_process
from distree.policies import make_policy
from distree.runtime.adaptive import AdaptConfig
from distree.runtime.aggregator import Aggregator, Deadlines
from distree.runtime.config import ServeConfig
from distree.runtime.device import Device, run_device
from distree.runtime.faults import parse_fault
from distree.runtime.group import AGGREGATOR_RANK, Session, init_group
from distree.runtime.netem import link_models
from distree.artifacts.manifest import takes_thresholds
from distree.runtime.onnx_device import check_artifacts, onnx_steps
from distree.runtime.pinning import parse_cpus, pin
from distree.runtime.predictions import check_replaceable, predictions_path, write_predictions
from distree.plan import make_plan, parse_thresholds
from distree.runtime.plan import with_loss_settings, with_paths
from distree.runtime.summary import build_report, print_table, report_path
from distree.runtime.trace import Trace, check_trace_folder
from distree.inference.step import DeviceStep
from distree.samples import load_samples
from distree.run_dir import class_names, load_student_model, load_surviving_sets, read_config


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
    pin(config.cpus, session.rank, session.world_size)  # after the check, which asks what this process may use
    shape = run_config["data_shape"]
    size = shape.get("image_size", SIZE)  # runs from before image sizes were kept are 32x32
    input_shape = (shape["in_channels"], size, size)
    trace = None if config.trace is None else Trace(config.trace, session.rank)
    if session.rank != AGGREGATOR_RANK:
        i = session.rank - 1
        steps, paths, full = device_steps(config, plan, i, session)
        freeze_loaded()
        return run_device(Device(session, i, steps, input_shape, links[i], faults, config.dead_after_s,
                                 config.connect_timeout_s, paths, full, trace))
    model = load_student_model(config.run)
    deadlines = Deadlines(fixed_s=config.deadline_ms / 1e3, factor=config.deadline_factor,
                          dead_after_s=config.dead_after_s, first_beat_s=config.connect_timeout_s)
    adapt = None if not config.adapting else AdaptConfig(
        None if config.latency_target_ms is None else config.latency_target_ms / 1e3, config.latency_target_x,
        percentile=config.percentile, window=config.adapt_window, shadow_fraction=config.shadow_fraction,
        warmup=config.warmup)
    surviving = load_surviving_sets(config.run, n)
    if surviving is None:
        print(f"aggregator: {config.run} has no surviving-set aggregators: an answer without some device "
              f"zeroes its evidence; `distree evaluate --run {config.run}` adds them", file=sys.stderr, flush=True)
    aggregator = Aggregator(session, model, plan, deadlines, config.window, faults, adapt, surviving, trace)
    samples = load_samples(config.run, config.split, config.sample_count(), config.images)
    x, labels = samples.x, samples.labels  # (S, C, H, W), (S,)
    single = single_process.SingleProcess(model, plan) if config.reference_samples > 0 else None
    freeze_loaded()

    def between(lo: int, hi: int) -> None:  # the same samples in one process, under the same load
        if single is not None and lo < config.reference_samples:
            single.time(x, lo, min(hi, config.reference_samples))

    aggregator.run(x, labels, config.chunk, between)
    aggregator.shutdown(torch.Size(input_shape).numel())
    if trace is not None:
        trace.write()
    report = build_report(config, session, model, links, aggregator, x, single)
    if config.images:  # which file each sample is: predictions[k] answers files[k]
        report.update(files=samples.files, skipped_files=[{"file": f, "why": why} for f, why in samples.skipped])
    path = report_path(config)
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    print_table(report, path)
    if config.images:  # a user's own images: the answer per file
        write_predictions(predictions_path(path, config.predictions), samples.files, samples.skipped,
                          [stream.run for stream in aggregator.streams],
                          labels.tolist(), class_names(run_config))
    return 0


def freeze_loaded() -> None:
    """Take what the rank has loaded (torch, the model: some 340,000 objects, none of them garbage)
    out of the garbage collector's sight: a full collection over them takes 150 ms on a 2-core
    machine, a stall of that sample; over what the stream allocates it takes well under 1 ms."""
    gc.freeze()


def device_steps(config: ServeConfig, plan: list, i: int, session: Session):
    """What device i computes each policy of the plan with (its PyTorch student, or its ONNX file),
    the plan's threshold paths and, where a path adapts, the walk to exit 7 for shadow samples."""
    paths = [s.settings() for s in plan]  # what a THRESHOLDS message may set, per policy
    if config.device_backend == "onnxruntime":  # students.pt is not read
        steps = onnx_steps(config.artifacts, plan, i, config.threads)
        return steps, paths, steps[0] if any(s.path is not None for s in plan) else None  # its graph, to exit 7
    model = load_student_model(config.run)
    student = model.students[i].to(session.device)  # on its GPU under NCCL; the aggregator's sums stay on the CPU
    steps = [DeviceStep(student, i, s.policy, s.thresholds, bias_share(model)) for s in plan]
    last = make_policy("last-exit")
    full = DeviceStep(student, i, last, last.default_thresholds(), bias_share(model)) if any(
        s.path is not None for s in plan) else None  # the shadows' walk to exit 7
    return steps, paths, full


def check_options(config: ServeConfig, n: int):
    """The plan, faults and links config asks for, or a DistreeError before any process starts."""
    check_adaptive_options(config)
    plan = make_plan(config.policies, parse_thresholds(config.thresholds), config.run, config.setting)
    movable = True  # whether the devices' thresholds can move (a latency target, a loss)
    if config.device_backend == "onnxruntime":
        movable = takes_thresholds(check_artifacts(config.artifacts, plan, n))
        if config.adapting and not movable:
            raise DistreeError(f"a latency target moves each device's thresholds, and the students in "
                               f"{config.artifacts} have theirs inside (exported before thresholds were an input, "
                               "or last-exit): export them again, or use --device-backend torch")
    elif config.artifacts is not None:
        raise DistreeError("--artifacts is for --device-backend onnxruntime")
    if config.adapting:
        plan = with_paths(plan, config.run, config.threshold_path, config.path_steps, config.consistency_epsilon,
                          delta=0.1, num_devices=n, served=config.setting)
    if movable:
        plan = with_loss_settings(plan, config.run, config.setting)
    faults = [parse_fault(f, n) for f in config.faults]
    links = link_models(config.link_delay_ms, config.link_mbps, config.link_jitter_ms, n)
    if min(config.window, config.chunk) < 1 or config.deadline_ms < 0 or config.dead_after_s <= 0:
        raise DistreeError("--window and --chunk must be >= 1, --deadline-ms >= 0, --dead-after-s > 0")
    check_counts(samples=config.samples or 0, reference_samples=config.reference_samples, warmup=config.warmup)
    if config.images:
        check_replaceable(predictions_path(report_path(config), config.predictions))
    if config.trace is not None:
        check_trace_folder(config.trace)
    if config.cpus is not None:
        parse_cpus(config.cpus, n + 1)
    return plan, faults, links


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


def run_rank(config: ServeConfig) -> int:
    """serve(config) with a user's error reported as one line; the exit code."""
    try:
        return serve(config)
    except DistreeError as err:
        print(f"error: rank {os.environ.get('RANK', '?')}: {err}", file=sys.stderr)
        return 2

