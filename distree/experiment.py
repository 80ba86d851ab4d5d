"""The whole experiment in one call: teacher, partition, students, then calibration and the report.

Each phase is skipped or resumed when the run directory already holds it, so an interrupted
demo continues where it stopped.
"""
import os
import platform
import time
from pathlib import Path

import torch

from distree.inference.timing import TimingConfig
from distree.training.partition import partition_run
from distree.evaluation import EvaluateConfig, Evaluation, evaluate_run
from distree.report import write_report
from distree.run_dir import CONFIG, PARTITION, STUDENTS, TEACHER, read_config, write_config
from distree.training.presets import run_config
from distree.training.students import train_students
from distree.training.teacher import train_teacher

# Lean evaluation for the demo's time budget: the engine is timed on a subset of the test split.
DEMO_EVALUATION = EvaluateConfig(timing=TimingConfig(compacting_samples=512, streaming_samples=512))


def run_experiment(out, preset: str = "demo", config: EvaluateConfig = DEMO_EVALUATION,
                   log=print) -> Evaluation:
    """Trains (or resumes) every phase of a run in `out`, evaluates it and writes its report."""
    out = Path(out)
    began = time.perf_counter()
    phases = {}  # seconds per phase in this call (a phase the run already held takes about none)

    def done(phase: str) -> None:
        phases[phase] = time.perf_counter() - began - sum(phases.values())
        log(f"{phase} done at {time.perf_counter() - began:.0f} s")

    if (out / CONFIG).exists():
        run = read_config(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        run = run_config(preset)
        write_config(out, run)
    train_teacher(out, run, (out / TEACHER).exists())
    done("teacher")
    if not (out / PARTITION).exists():
        partition_run(out, run)
        write_config(out, run)
    done("partition")
    train_students(out, run, (out / STUDENTS).exists())
    done("students")
    evaluation = evaluate_run(out, config)
    done("evaluation")
    report = evaluation.report
    report.update(phases_s=phases, elapsed_s=time.perf_counter() - began, machine=machine())
    write_report(evaluation, out)
    return evaluation


def machine() -> str:
    """What the experiment ran on, for its times: the CPU's model name, its cores and torch's threads."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu} ({os.cpu_count()} cores), torch {torch.__version__}, {torch.get_num_threads()} threads"
