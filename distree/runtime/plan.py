"""Which policies a session runs, in which order, with which thresholds.

Every rank builds the same plan from the same arguments and run directory, so a message names
its policy by its index in the plan and nothing else needs to travel. Thresholds come from the
command line, else from the run's calibration (`distree evaluate` writes the setting chosen on
validation into report.json), else the policy's defaults, which stop nobody early.
"""
from dataclasses import dataclass

import torch

from distree.errors import DistreeError
from distree.policies import LearnedGatePolicy, Policy, check_thresholds, make_policy
from distree.run_dir import calibrated_thresholds, load_learned_gate


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


def load_policy(name: str, run_dir) -> Policy:
    """The policy called name; the learned gate comes fitted from the run directory."""
    return load_learned_gate(run_dir) if name == LearnedGatePolicy.name else make_policy(name)


def make_plan(names: list[str], given: dict[str, torch.Tensor], run_dir) -> list[PolicySpec]:
    """The policies in order, each with its given, else calibrated, else default thresholds."""
    unknown = set(given) - set(names)
    if unknown:
        raise DistreeError(f"--threshold given for {', '.join(sorted(unknown))}, which --policies does not run")
    thresholds = {**calibrated_thresholds(run_dir), **given}
    plan = []
    for name in names:
        policy = load_policy(name, run_dir)
        t = thresholds.get(name)
        plan.append(PolicySpec(name, policy, policy.default_thresholds() if t is None else t))
    return plan
