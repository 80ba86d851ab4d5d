"""Accuracy when devices are lost: per surviving set, and expected over every failure pattern.

A local policy's exits do not depend on the other students, so a surviving set S answers with
the exits its members would have taken anyway and the set's own aggregator
(`distree.models.surviving_sets`). The expected accuracy when each device is up with
probability p weighs every pattern S by p^|S| (1 - p)^(N - |S|), as ResiliNet defines it; the
pattern with no device up gives no answer and counts as wrong.
"""
from dataclasses import dataclass, replace

import torch

from distree.costs import CostConfig, FlopTable
from distree.inference.evidence import Evidence
from distree.inference.outcome import PolicyEvaluator
from distree.models.surviving_sets import SurvivingSets, aggregator_for
from distree.policies import Policy

AVAILABILITIES = (0.99, 0.95, 0.9)  # the report's per-device probabilities of being up


@dataclass
class SetOutcome:
    """One policy setting with only `members` answering."""

    members: tuple[int, ...]
    accuracy: float  # with the set's own aggregator
    accuracy_zeroed: float  # with the healthy aggregator, the missing evidence zeroed
    flops_reduction: float  # of the members' FLOPs at the last exit


def members_flops(flops: FlopTable, members: tuple[int, ...]) -> FlopTable:
    """The FLOP table of the members alone: the other students' stages and heads cost nothing."""
    keep = torch.zeros(flops.stage.shape[0], 1, dtype=flops.stage.dtype)
    keep[list(members)] = 1
    return replace(flops, stage=flops.stage * keep, head=flops.head * keep)


def set_evaluator(model, table: SurvivingSets | None, ev: Evidence, flops: FlopTable, policy: Policy,
                  members: tuple[int, ...], costs: CostConfig = CostConfig()) -> PolicyEvaluator:
    """A local policy's evaluator on ev when only `members` answer: their exits (the others' are computed
    but never read), the set's aggregator (zeros without a table) and the members' FLOPs."""
    aggregate = torch.no_grad()(aggregator_for(model, table, members))
    return PolicyEvaluator(policy, replace(ev, aggregate=aggregate), members_flops(flops, members), costs)


def set_outcome(model, table: SurvivingSets | None, ev: Evidence, flops: FlopTable, policy: Policy,
                thresholds: torch.Tensor, members: tuple[int, ...]) -> SetOutcome:
    """A local policy at thresholds (5,) with only `members` answering, on the evidence ev."""
    own = set_evaluator(model, table, ev, flops, policy, members)(thresholds)
    zeroed = set_evaluator(model, None, ev, flops, policy, members)(thresholds)
    return SetOutcome(members, own.accuracy, zeroed.accuracy, own.flops_reduction)


def expected_accuracy(accuracy: dict[tuple[int, ...], float], n: int, p: float) -> float:
    """Accuracy expected when each of n devices is up with probability p, independently: every
    non-empty surviving set's accuracy weighed by the probability of exactly that set."""
    return sum(p ** len(s) * (1 - p) ** (n - len(s)) * a for s, a in accuracy.items())
