"""`distree demo`: the whole experiment on the demo preset, ending with the policy table."""
from pathlib import Path

from distree.experiment import run_experiment
from distree.report.markdown import certified_summary, certified_text, policy_table, summary
from distree.run_dir import REPORT_MD


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train teacher and students on the demo preset, calibrate and compare "
                                           "every exit policy, write the report (about 10 minutes on 2 cores)")
    p.add_argument("--out", default="runs/demo",
                   help="run directory; an interrupted demo resumes there (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    report = run_experiment(args.out).shown()
    print(policy_table(report))
    print()
    print(summary(report))
    for spec in report.certified:
        print()
        print(certified_text(spec))
    print()
    print(certified_summary(report))
    print(f"total {report.elapsed_s:.0f} s; report: {Path(args.out) / REPORT_MD}")
    return 0
