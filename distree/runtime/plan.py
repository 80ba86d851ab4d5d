"""Which policies a session runs, in which order, with which thresholds.

Every rank builds the same plan from the same arguments and run directory, so a message names
its policy by its index in the plan and nothing else needs to travel. Thresholds come from the
command line, else from the run's calibration (`distree evaluate` writes the setting chosen on
validation into report.json), else the policy's defaults, which stop nobody early.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from distree.errors import DistreeError
from distree.policies import LearnedGatePolicy, Policy, check_thresholds, make_policy
from distree.report import MAIN
from distree.training.checkpoint import load_checkpoint


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


def calibrated_thresholds(run_dir) -> dict[str, torch.Tensor]:
    """{policy: thresholds} of the calibrated settings in the run's report.json; {} without one."""
    path = Path(run_dir) / "report.json"
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())["policies"]
        return {e["policy"]: check_thresholds([float(v) for v in e["thresholds"]])
                for e in entries if e["setting"] == MAIN}
    except (ValueError, KeyError, TypeError) as err:
        raise DistreeError(f"cannot read the calibrated thresholds in {path}: {err!r}") from None


def load_policy(name: str, run_dir) -> Policy:
    """The policy called name; the learned gate comes fitted from the run directory."""
    if name != LearnedGatePolicy.name:
        return make_policy(name)
    from distree.report.evaluate import GATE_FILE  # here: that module brings matplotlib, which devices never need

    path = Path(run_dir) / GATE_FILE
    if not path.exists():
        raise DistreeError(f"no fitted learned gate in {run_dir}; run `distree evaluate --run {run_dir}` first")
    return LearnedGatePolicy.from_state_dict(load_checkpoint(path)["state"])


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
