"""What losing a device costs, per run: the last exit's test accuracy healthy and with each proper
subset of the students answering alone, by the subset's own aggregator (the run's
surviving_sets.json, else fitted here on the training split's evidence as `distree evaluate`
does) and by the healthy aggregator with the missing evidence zeroed; and the expected accuracy
when each device is up with probability p. One row per run, so runs trained with different
`--failout` rates compare side by side:

    python benches/lost_device.py runs/demo runs/failout-0.1 runs/failout-0.2
"""
import argparse

import torch

from distree.costs import count_flops
from distree.evaluation import EvaluateConfig
from distree.inference.degraded import AVAILABILITIES, expected_accuracy, set_outcome
from distree.inference.evidence import collect_evidence
from distree.models.surviving_sets import fit_surviving_sets, proper_subsets
from distree.policies import make_policy
from distree.run_dir import load_student_model, load_surviving_sets, read_config, run_splits


def run_row(run: str) -> str:
    """The markdown row of one run."""
    config = read_config(run)
    model = load_student_model(run)
    splits = run_splits(run, config)
    n = len(model.students)
    test = collect_evidence(model, splits.test)
    table = load_surviving_sets(run, n)
    if table is None:
        train = collect_evidence(model, splits.train, limit=EvaluateConfig().gate_samples)
        table = fit_surviving_sets(model, train.u, train.labels)
    x, _ = splits.test.batch(torch.arange(1))
    flops = count_flops(model, x.contiguous(memory_format=torch.channels_last))
    last = make_policy("last-exit")
    outcomes = [set_outcome(model, table, test, flops, last, last.default_thresholds(), s)
                for s in [tuple(range(n))] + proper_subsets(n)]
    healthy, lost = outcomes[0], outcomes[1:]
    fitted = {o.members: o.accuracy for o in outcomes}
    cells = [f"{config['students']['loss'].get('failout', 0.0):g}", f"{healthy.accuracy:.2%}"]
    cells += [f"{o.accuracy:.2%} ({o.accuracy_zeroed:.2%})" for o in lost]
    cells += [f"{expected_accuracy(fitted, n, p):.2%}" for p in AVAILABILITIES]
    return f"| {run} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories with trained students")
    args = parser.parse_args()
    torch.set_num_threads(2)
    n = len(load_student_model(args.runs[0]).students)
    sets = [" ".join(map(str, s)) for s in proper_subsets(n)]
    print("| run | failout | healthy | " + " | ".join(f"only {{{s}}} (zeroed)" for s in sets) + " | "
          + " | ".join(f"expected p={p}" for p in AVAILABILITIES) + " |")
    print("|" + " --- |" * (3 + len(sets) + len(AVAILABILITIES)))
    for run in args.runs:
        print(run_row(run), flush=True)


if __name__ == "__main__":
    main()
