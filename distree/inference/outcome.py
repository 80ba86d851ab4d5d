"""What one policy setting achieves on a split: accuracy, FLOPs, simulated latency, exits."""
from dataclasses import dataclass

import torch

from distree.costs import CostConfig, FlopTable, flops_per_sample, simulated_latency
from distree.inference.evidence import Evidence, policy_scores
from distree.policies import NUM_EXITS, Policy, check_thresholds


@dataclass
class Outcome:
    thresholds: torch.Tensor  # (5,)
    accuracy: float  # fraction of samples right
    flops: float  # mean FLOPs per sample
    flops_reduction: float  # fraction of last-exit FLOPs saved
    latency_s: float  # mean simulated latency per sample
    histogram: torch.Tensor  # (N, 7) exit counts per student


class PolicyEvaluator:
    """Scores a split's evidence once for a policy, then evaluates any thresholds cheaply."""

    def __init__(self, policy: Policy, evidence: Evidence, flops: FlopTable, costs: CostConfig = CostConfig()):
        self.policy, self.evidence, self.flops, self.costs = policy, evidence, flops, costs
        self.scores = policy_scores(policy, evidence)  # (N, 5, B)

    def exits(self, thresholds) -> torch.Tensor:
        return self.policy.exits(self.scores, thresholds)  # (N, B)

    def __call__(self, thresholds) -> Outcome:
        thresholds = check_thresholds(thresholds)
        exits = self.exits(thresholds)  # (N, B)
        ev = self.evidence
        right = ev.answers(exits) == ev.labels  # (B,)
        flops = flops_per_sample(self.flops, exits, self.policy).mean().item()
        latency = simulated_latency(self.flops, exits, self.policy, ev.u.shape[-1], self.costs)  # (B,)
        histogram = torch.stack([torch.bincount(e, minlength=NUM_EXITS) for e in exits])  # (N, 7)
        return Outcome(thresholds, right.float().mean().item(), flops, 1 - flops / self.flops.last_exit(),
                       latency.mean().item(), histogram)
