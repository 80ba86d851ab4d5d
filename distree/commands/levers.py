"""`distree levers`: retrain a run's students once per training lever and compare the exit policies."""
from pathlib import Path

from distree.errors import DistreeError
from distree.levers import LEVERS, LeverConfig, lever_table, run_levers


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("levers", help="retrain a finished run's students once per training lever "
                                             "(mixed-exit term, AT, exit weights, exit space) and compare policies")
    p.add_argument("--run", required=True, help="finished run directory (its teacher and partition are reused)")
    p.add_argument("--out", help="where the lever runs and levers.md go (default: RUN/levers)")
    p.add_argument("--epochs", type=int, default=1, help="student epochs per lever (default: %(default)s)")
    p.add_argument("--lever", action="append", choices=list(LEVERS),
                   help="a lever to run, repeatable: %(choices)s (default: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.epochs < 1:
        raise DistreeError(f"--epochs must be 1 or more, got {args.epochs}")
    out = Path(args.out) if args.out else Path(args.run) / "levers"
    config = LeverConfig(epochs=args.epochs, levers=args.lever or list(LEVERS))
    print(lever_table(run_levers(args.run, out, config)))
    print(f"table: {out / 'levers.md'}")
    return 0
