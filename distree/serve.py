"""`python -m distree.serve`: the entry point of one rank of a distributed session
(torchrun: `torchrun --nproc-per-node N+1 -m distree.serve -- --run DIR`).

Rank 0 draws the session's figures from its report once the session is over. Every rank leaves
through os._exit once its output is flushed: a gloo receive cannot be cancelled, so a receive
still posted to a peer that stalled or died would make a normal interpreter exit (and
destroy_process_group) wait for it forever.
"""
import argparse
import os
import sys

from distree.runtime.config import add_serve_arguments, config_from_args
from distree.runtime.group import AGGREGATOR_RANK
from distree.runtime.rank import run_rank
from distree.runtime.summary import report_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distree.serve", description="One rank of a distributed session")
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args(argv))
    code = run_rank(config)
    if code == 0 and config.adapting and int(os.environ.get("RANK", AGGREGATOR_RANK)) == AGGREGATOR_RANK:
        from distree.report import write_session_figures  # matplotlib only where a figure is drawn

        write_session_figures(report_path(config))
    return code


def exit_rank(argv=None) -> None:
    """main(), then os._exit with its code once stdout and stderr are flushed."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_rank()
