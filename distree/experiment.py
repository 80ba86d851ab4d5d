"""The whole experiment in one call: teacher, partition, students, then calibration and the report.

Each phase is skipped or resumed when the run directory already holds it, so an interrupted
demo continues where it stopped.
"""
import time
from pathlib import Path

from distree.inference.timing import TimingConfig
from distree.training.partition import partition_run
from distree.evaluation import EvaluateConfig, Evaluation, evaluate_run
from distree.report import write_report
from distree.run_dir import CONFIG, PARTITION, STUDENTS, TEACHER, read_config, write_config
from distree.training.presets import run_config
from distree.training.students import train_students
from distree.training.teacher import train_teacher

# Lean evaluation for the demo's time budget: the engine is timed on a subset of the test split.
DEMO_EVALUATION = EvaluateConfig(timing=TimingConfig(compacting_samples=256, streaming_samples=32))


def run_experiment(out, preset: str = "demo", config: EvaluateConfig = DEMO_EVALUATION,
                   log=print) -> Evaluation:
    """Trains (or resumes) every phase of a run in `out`, evaluates it and writes its report."""
    out = Path(out)
    began = time.perf_counter()
    if (out / CONFIG).exists():
        run = read_config(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        run = run_config(preset)
        write_config(out, run)
    train_teacher(out, run, (out / TEACHER).exists())
    log(f"teacher done at {time.perf_counter() - began:.0f} s")
    if not (out / PARTITION).exists():
        partition_run(out, run)
        write_config(out, run)
    train_students(out, run, (out / STUDENTS).exists())
    log(f"students done at {time.perf_counter() - began:.0f} s")
    evaluation = evaluate_run(out, config)
    report = evaluation.report
    report["evaluation_s"], report["elapsed_s"] = report["elapsed_s"], time.perf_counter() - began
    write_report(evaluation, out)
    log(f"evaluation done at {time.perf_counter() - began:.0f} s")
    return evaluation
