"""Which order of the certification candidates certifies most: measured on one run.

`distree evaluate` builds each local policy's candidate path on training-split evidence, so the order
never sees the validation samples it is tested on. The students were trained on those images, so one
could expect an order built on images they never saw to carry over better. This compares, per risk
and local policy, the FLOPs saved on test by the certified setting when the path is ordered

- on the training split (what `distree evaluate` does);
- on held-out images (half of the test split stands in for an ordering split carved from the
  training images and never trained on; the other half measures every row);
- on the validation samples themselves: NOT a valid certificate (the order has seen the samples
  that test it), only an upper bound on what any order could reach with these students and n.

    python benches/candidate_orders.py --run runs/demo
"""
import argparse

import torch

from distree.costs import count_flops
from distree.evaluation import EvaluateConfig, build_policies
from distree.inference.evidence import collect_evidence
from distree.inference.outcome import PolicyEvaluator
from distree.risk import RiskSpec, candidate_path, certify, path_losses
from distree.run_dir import load_student_model, read_config, run_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an evaluated run directory")
    parser.add_argument("--seed", type=int, default=0, help="of the test split's halves")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = EvaluateConfig()
    model = load_student_model(args.run)
    splits = run_splits(args.run, read_config(args.run))
    x, _ = splits.test.batch(torch.arange(1))
    flops = count_flops(model, x.contiguous(memory_format=torch.channels_last))
    policies, train = build_policies(model, splits.train, config)
    val, test = collect_evidence(model, splits.val), collect_evidence(model, splits.test)
    half = torch.randperm(test.u.shape[2], generator=torch.Generator().manual_seed(args.seed)).chunk(2)
    held_out, measure = test.subset(half[0]), test.subset(half[1])
    local = [n for n, p in policies.items() if p.local and n not in ("last-exit", "random")]
    orders = {"training split": lambda: train, "held-out images": lambda: held_out, "val itself (not valid)": lambda: val}
    print(f"{val.u.shape[2]} validation samples certify; {measure.u.shape[2]} test samples measure; "
          f"{train.u.shape[2]} training and {held_out.u.shape[2]} held-out images order\n")
    for spec in config.risks:
        print(f"| {spec.risk} <= {spec.epsilon:g}: FLOPs saved on test (test risk) | " + " | ".join(orders) + " |")
        print("|" + " --- |" * (1 + len(orders)))
        for name in local:
            policy, cells = policies[name], []
            for ordering in orders.values():
                path = candidate_path(PolicyEvaluator(policy, ordering(), flops), config.risk_path,
                                      config.risk_candidates)
                cert = certify(path, path_losses(PolicyEvaluator(policy, val, flops), path, spec.risk), spec)
                if cert.index < 0:
                    cells.append("none")
                    continue
                on_test = path_losses(PolicyEvaluator(policy, measure, flops), cert.thresholds[None], spec.risk)
                saved = 1 - on_test.flops.mean().item() / flops.last_exit()
                cells.append(f"{saved:.1%} ({on_test.loss.double().mean().item():.2%})")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        print()


if __name__ == "__main__":
    main()
