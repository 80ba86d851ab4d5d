"""Accuracy when devices are lost: per surviving set, and expected over every failure pattern.

A local policy's exits do not depend on the other students, so a surviving set S answers with
the exits its members would have taken anyway and the set's own aggregator
(`distree.models.surviving_sets`). The expected accuracy when each device is up with
probability p weighs every pattern S by p^|S| (1 - p)^(N - |S|), as ResiliNet defines it; the
pattern with no device up gives no answer and counts as wrong.
"""
from dataclasses import dataclass, replace

import torch

from distree.costs import FlopTable, flops_per_sample
from distree.inference.evidence import Evidence
from distree.models.surviving_sets import SurvivingSets, aggregator_for
from distree.policies import LAST_EXIT, Policy

AVAILABILITIES = (0.99, 0.95, 0.9)  # the report's per-device probabilities of being up


@dataclass
class SetOutcome:
    """One policy setting with only `members` answering."""

    members: tuple[int, ...]
    accuracy: float  # with the set's own aggregator
    accuracy_zeroed: float  # with the healthy aggregator, the missing evidence zeroed
    flops_reduction: float  # of the members' FLOPs at the last exit


def set_outcome(model, table: SurvivingSets | None, ev: Evidence, flops: FlopTable, policy: Policy,
                exits: torch.Tensor, members: tuple[int, ...]) -> SetOutcome:
    """Members answering at exits (N, B) (the other rows unused) on the evidence ev."""
    idx = exits.view(exits.shape[0], 1, -1, 1).expand(-1, 1, -1, ev.u.shape[-1])  # (N, 1, B, K)
    sent = ev.u.gather(1, idx).squeeze(1)  # (N, B, K)
    rows = list(members)
    own = flops_per_sample(replace(flops, stage=flops.stage[rows], head=flops.head[rows]), exits[rows], policy)
    last = flops.stage[rows].sum() + flops.head[rows, LAST_EXIT].sum() + flops.aggregator

    def accuracy(aggregate) -> float:
        return (aggregate(sent).argmax(-1) == ev.labels).float().mean().item()

    with torch.no_grad():
        return SetOutcome(members, accuracy(aggregator_for(model, table, members)),
                          accuracy(aggregator_for(model, None, members)), 1 - own.mean().item() / float(last))


def expected_accuracy(accuracy: dict[tuple[int, ...], float], n: int, p: float) -> float:
    """Accuracy expected when each of n devices is up with probability p, independently: every
    non-empty surviving set's accuracy weighed by the probability of exactly that set."""
    return sum(p ** len(s) * (1 - p) ** (n - len(s)) * a for s, a in accuracy.items())
