"""distree: distributed early-exit inference (DistrEE) for edge devices.

One image classifier runs as N small student networks on N devices; each student has 7 exits and
stops at the first whose exit rule is met, and an aggregator sums the class evidence the students
send. The commands, in the order a user runs them: train a teacher, partition its filters over
the students, train the students, evaluate and calibrate the exit policies, then serve the run on
local processes (deploy) or export each student for a device (export). `distree demo` runs the
whole experiment on Fashion-MNIST; `overhead` and `levers` measure the exits' cost and the
training levers. `distree COMMAND --help` lists a command's options.
"""
import argparse
import importlib
import os
import sys
from importlib import metadata

import distree
from distree.errors import DistreeError

# Sub-command modules under distree/commands/, in the order a user runs them (and `--help` lists them).
COMMANDS = [
    "train_teacher",
    "partition",
    "train_students",
    "evaluate",
    "deploy",
    "export",
    "demo",
    "overhead",
    "levers",
]


def version() -> str:
    """The installed package's version (pyproject.toml), or the source tree's where it is not installed."""
    try:
        return metadata.version("distree")
    except metadata.PackageNotFoundError:
        return distree.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distree", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"distree {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"distree.commands.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Parses the arguments, runs the command, and turns a user's error into one line and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DistreeError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike; rank 0 says why
            print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
