"""Which policies a session runs, in which order, with which thresholds.

Every rank builds the same plan from the same arguments, so a message names its policy by its
index in the plan and nothing else needs to travel.
"""
from dataclasses import dataclass

import torch

from distree.errors import DistreeError
from distree.policies import Policy, check_thresholds, make_policy


@dataclass
class PolicySpec:
    name: str
    policy: Policy
    thresholds: torch.Tensor  # (5,) for exits 2..6


def parse_thresholds(items: list[str]) -> dict[str, torch.Tensor]:
    """{policy: thresholds} from ["distree=1.1", "confidence=0.9,0.9,0.8,0.8,0.7", ...]."""
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        try:
            parsed = [float(v) for v in values.split(",")]
        except ValueError:
            parsed = None
        if not (name and sep and parsed):
            raise DistreeError(f"bad --threshold {item!r}; write POLICY=T or POLICY=T2,T3,T4,T5,T6")
        out[name] = check_thresholds(parsed[0] if len(parsed) == 1 else parsed)
    return out


def make_plan(names: list[str], thresholds: dict[str, torch.Tensor]) -> list[PolicySpec]:
    """The policies in order; a policy without given thresholds uses its own defaults."""
    unknown = set(thresholds) - set(names)
    if unknown:
        raise DistreeError(f"--threshold given for {', '.join(sorted(unknown))}, which --policies does not run")
    plan = []
    for name in names:
        policy = make_policy(name)
        t = thresholds.get(name)
        plan.append(PolicySpec(name, policy, policy.default_thresholds() if t is None else t))
    return plan
