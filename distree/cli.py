"""The `distree` command: parses arguments, calls one function per sub-command, reports errors."""
import argparse
import importlib
import os
import sys

from distree.errors import DistreeError

# Sub-command modules under distree/commands/, in the order `distree --help` lists them.
COMMANDS = [
    "train_teacher",
    "partition",
    "train_students",
    "overhead",
    "deploy",
    "evaluate",
    "demo",
    "levers",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distree", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"distree.commands.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DistreeError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike; rank 0 says why
            print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
