"""`distree evaluate`: calibrate every exit policy on val, measure on test, write the report."""
from distree.calibration import CalibrationConfig
from distree.data import DATASETS
from distree.errors import DistreeError, check_counts, check_fraction
from distree.inference.timing import TimingConfig
from distree.evaluation import EvaluateConfig, evaluate_run
from distree.report import write_report
from distree.report.markdown import certified_summary, policy_table, stored_summary, summary
from distree.plan import parse_thresholds
from distree.risk import DEFAULT_EPSILON, RiskSpec
from distree.run_dir import REPORT_MD


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="calibrate and compare the exit policies of a trained run; "
                                               "writes report.json, report.md and plots")
    p.add_argument("--run", required=True, help="run directory holding trained students")
    p.add_argument("--dataset", choices=DATASETS,
                   help="check that the run is on this dataset, one of %(choices)s (default: no check)")
    p.add_argument("--max-drop", type=float, default=0.5,
                   help="accuracy points below last exit allowed when calibrating (default: %(default)s)")
    p.add_argument("--flops-budget", type=float, help="also pick the most accurate setting within this fraction of "
                                                      "last-exit FLOPs, in (0, 1], e.g. 0.6 (default: none)")
    p.add_argument("--latency-budget-ms", type=float, help="also pick the most accurate setting within this "
                                                           "simulated latency, > 0 (default: none)")
    p.add_argument("--threshold", "--thresholds", dest="thresholds", action="append", default=[],
                   metavar="POLICY=T[,...]", help="also evaluate these thresholds for exits 2..6 as given (one value "
                                                  "or five; inf, -inf allowed), as deploy and export take them; "
                                                  "repeatable (default: none)")
    p.add_argument("--name", help="keep this evaluation beside the run's others: its report in "
                                  "RUN/evaluations/NAME, its settings added as NAME:calibrated, NAME:certified-RISK "
                                  "(default: the run's own report; settings the run holds are never replaced)")
    p.add_argument("--risk", default="accuracy,consistency",
                   help="risks to certify, comma-separated: accuracy (harm rate; bounds the accuracy drop) and/or "
                        "consistency (answer differs from exit 7's; needs no labels) (default: %(default)s)")
    p.add_argument("--epsilon",
                   help="the risk certified per --risk (one value for all, or one each), a fraction; "
                        "default 0.005 for accuracy, 0.01 for consistency")
    p.add_argument("--delta", type=float, default=0.1,
                   help="allowed probability that a certified setting's risk exceeds epsilon, in (0, 1) "
                        "(default: %(default)s)")
    p.add_argument("--resplits", type=int, default=200,
                   help="random calibration / held-out halves of val + test on which the guarantee is checked "
                        "(0 skips the check) (default: %(default)s)")
    p.add_argument("--gate-samples", type=int, default=5000,
                   help="training images the learned gate is fitted on (default: %(default)s)")
    p.add_argument("--timing-samples", type=int, default=512,
                   help="test samples timed in compacting mode (default: %(default)s)")
    p.add_argument("--streaming-samples", type=int, default=48,
                   help="test samples timed one at a time (default: %(default)s)")
    p.set_defaults(func=run)


def parse_risks(risk: str, epsilon: str | None, delta: float) -> list[RiskSpec]:
    """One checked RiskSpec per --risk name, with its --epsilon (one value for all, one each, or the default)."""
    names = risk.split(",")
    for name in names:
        RiskSpec(name).check()
    if epsilon is None:
        return [RiskSpec(n, DEFAULT_EPSILON[n], delta).check() for n in names]
    try:
        eps = [float(v) for v in epsilon.split(",")]
    except ValueError:
        raise DistreeError(f"--epsilon takes comma-separated numbers, got {epsilon!r}") from None
    if len(eps) not in (1, len(names)):
        raise DistreeError(f"--epsilon takes one value or one per risk ({len(names)}), got {len(eps)}")
    eps = eps * len(names) if len(eps) == 1 else eps
    return [RiskSpec(n, e, delta).check() for n, e in zip(names, eps)]


def config_from_args(args) -> EvaluateConfig:
    thresholds = parse_thresholds(args.thresholds)
    if "last-exit" in thresholds:
        raise DistreeError("--threshold: last-exit takes no thresholds (it always runs to exit 7)")
    check_counts(resplits=args.resplits, gate_samples=args.gate_samples, timing_samples=args.timing_samples,
                 streaming_samples=args.streaming_samples)
    check_fraction(flops_budget=args.flops_budget)
    if args.latency_budget_ms is not None and not args.latency_budget_ms > 0:
        raise DistreeError(f"--latency-budget-ms must be > 0, got {args.latency_budget_ms:g}")
    return EvaluateConfig(calibration=CalibrationConfig(max_drop=args.max_drop / 100),
                          gate_samples=args.gate_samples, flops_budget=args.flops_budget,
                          latency_budget_ms=args.latency_budget_ms, thresholds=thresholds,
                          risks=parse_risks(args.risk, args.epsilon, args.delta), resplits=args.resplits,
                          timing=TimingConfig(compacting_samples=args.timing_samples,
                                              streaming_samples=args.streaming_samples))


def run(args) -> int:
    evaluation = evaluate_run(args.run, config_from_args(args), args.dataset, args.name)
    write_report(evaluation, evaluation.out)
    report = evaluation.shown()
    print(policy_table(report))
    print()
    print(summary(report))
    print(certified_summary(report))
    print(stored_summary(evaluation.stored))
    print(f"report: {evaluation.out / REPORT_MD}")
    return 0
