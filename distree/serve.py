"""Entry point of one rank: `torchrun --nproc-per-node N+1 -m distree.serve --run DIR ...`.

Rank 0 is the aggregator, ranks 1..N the student devices (see distree/runtime). Every rank
leaves through os._exit once its output is flushed: a gloo receive cannot be cancelled, so a
receive still posted to a peer that stalled or died would make a normal interpreter exit (and
destroy_process_group) wait for it forever.
"""
import argparse
import os
import sys

from distree.errors import DistreeError
from distree.runtime.config import ServeConfig, add_serve_arguments, config_from_args
from distree.runtime.serve import serve


def run_rank(config: ServeConfig) -> int:
    """serve(config) with a user's error reported as one line; the exit code."""
    try:
        return serve(config)
    except DistreeError as err:
        print(f"error: rank {os.environ.get('RANK', '?')}: {err}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distree.serve", description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    return run_rank(config_from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
