"""`distree evaluate`: calibrate every exit policy on val, measure on test, write the report."""
from pathlib import Path

from distree.calibration import CalibrationConfig
from distree.data import DATASETS
from distree.errors import DistreeError
from distree.inference.timing import TimingConfig
from distree.evaluation import EvaluateConfig, evaluate_run
from distree.report import write_report
from distree.report.markdown import policy_table, summary
from distree.run_dir import REPORT_MD


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="calibrate and compare the exit policies of a trained run; "
                                               "writes report.json, report.md and plots")
    p.add_argument("--run", required=True, help="run directory holding trained students")
    p.add_argument("--dataset", choices=DATASETS, help="check that the run is on this dataset")
    p.add_argument("--max-drop", type=float, default=0.5,
                   help="accuracy points below last exit allowed when calibrating (default 0.5)")
    p.add_argument("--flops-budget", type=float, help="also pick the most accurate setting within this fraction "
                                                      "of last-exit FLOPs (e.g. 0.6)")
    p.add_argument("--latency-budget-ms", type=float, help="also pick the most accurate setting within this "
                                                           "simulated latency")
    p.add_argument("--thresholds", help="DistrEE thresholds to evaluate as given: one value or 5 (exits 2..6), "
                                        "comma-separated")
    p.add_argument("--gate-samples", type=int, default=5000, help="training images the learned gate is fitted on")
    p.add_argument("--timing-samples", type=int, default=512, help="test samples timed in compacting mode")
    p.add_argument("--streaming-samples", type=int, default=48, help="test samples timed one at a time")
    p.set_defaults(func=run)


def parse_thresholds(text: str | None) -> list[float] | None:
    try:
        return None if text is None else [float(v) for v in text.split(",")]
    except ValueError:
        raise DistreeError(f"--thresholds takes comma-separated numbers, got {text!r}") from None


def config_from_args(args) -> EvaluateConfig:
    thresholds = parse_thresholds(args.thresholds)
    return EvaluateConfig(calibration=CalibrationConfig(max_drop=args.max_drop / 100),
                          gate_samples=args.gate_samples, flops_budget=args.flops_budget,
                          latency_budget_ms=args.latency_budget_ms, thresholds=thresholds,
                          timing=TimingConfig(compacting_samples=args.timing_samples,
                                              streaming_samples=args.streaming_samples))


def run(args) -> int:
    evaluation = evaluate_run(args.run, config_from_args(args), args.dataset)
    write_report(evaluation, args.run)
    print(policy_table(evaluation.report))
    print()
    print(summary(evaluation.report))
    print(f"report: {Path(args.run) / REPORT_MD}")
    return 0
