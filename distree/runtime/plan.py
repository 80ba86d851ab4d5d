"""Which policies a session runs, in which order, with which thresholds.

Every rank builds the same plan from the same arguments and run directory, so a message names
its policy by its index in the plan and nothing else needs to travel. Thresholds come from the
command line, else from the run's calibration (`distree evaluate` writes the setting chosen on
validation into report.json), else the policy's defaults, which stop nobody early.

Under a latency target a local policy also gets a path: the settings it may move along, most
conservative first (`with_paths`). It is the certified calibration path `distree evaluate`
stores in report.json (candidates 0..k of the certification's fixed sequence, every one
certified, k the cheapest), or a path given in a JSON file; at most `steps` settings of it,
evenly spaced, both ends kept. The setting starts at the conservative end.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distree.errors import DistreeError
from distree.policies import LearnedGatePolicy, Policy, check_thresholds, make_policy
from distree.run_dir import REPORT, calibrated_thresholds, load_learned_gate

PATH_RISKS = ("consistency", "accuracy")  # the certified path taken from report.json, in this preference


@dataclass
class PolicySpec:
    name: str
    policy: Policy
    thresholds: torch.Tensor  # (5,) for exits 2..6
    path: torch.Tensor = None  # (C, 5) settings to adapt along, conservative first; None: static
    risk: dict = field(default_factory=dict)  # the consistency risk the shadow check holds: epsilon, delta, source


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


def read_path_file(path) -> dict[str, torch.Tensor]:
    """{policy: (C, 5)} from a JSON file {"POLICY": [[T2, ..., T6], ...]} ("inf" and "-inf" allowed)."""
    try:
        given = json.loads(Path(path).read_text())
        return {name: torch.stack([check_thresholds([float(v) for v in t]) for t in settings])
                for name, settings in given.items() if settings}
    except (OSError, ValueError, TypeError, AttributeError, DistreeError) as err:
        raise DistreeError(f"--threshold-path {path}: write {{\"POLICY\": [[T2, ..., T6], ...]}}, "
                           f"conservative first ({err})") from None


def certified_paths(run_dir) -> dict[str, tuple[torch.Tensor, dict]]:
    """{policy: (path (C, 5), the consistency risk it is certified for, or None)} from the certified
    entries of the run's report.json; {} without one."""
    report = Path(run_dir) / REPORT
    if not report.exists():
        return {}
    specs = {c["risk"]: c for c in json.loads(report.read_text()).get("certified", [])}
    out = {}
    for risk in reversed(PATH_RISKS):  # the preferred risk written last
        for e in specs.get(risk, {}).get("policies", []):
            if e.get("path"):
                held = {"epsilon": specs[risk]["epsilon"], "delta": specs[risk]["delta"],
                        "source": f"{report}: certified consistency"} if risk == "consistency" else None
                out[e["policy"]] = (torch.stack([check_thresholds([float(v) for v in t]) for t in e["path"]]), held)
    return out


def thin_path(path: torch.Tensor, steps: int) -> torch.Tensor:
    """At most `steps` settings of path (C, 5), evenly spaced by index, both ends kept."""
    keep = torch.linspace(0, len(path) - 1, min(steps, len(path))).round().long().unique()
    return path[keep]  # (C', 5)


def with_paths(plan: list[PolicySpec], run_dir, path_file, steps: int, epsilon: float, delta: float) -> list[PolicySpec]:
    """The plan with a path on every local policy that has one (given in path_file, else certified);
    a DistreeError if none has."""
    given = read_path_file(path_file) if path_file else {}
    unknown = set(given) - {s.name for s in plan}
    if unknown:
        raise DistreeError(f"--threshold-path gives {', '.join(sorted(unknown))}, which --policies does not run")
    stored = certified_paths(run_dir)
    fallback = {"epsilon": epsilon, "delta": delta, "source": "--consistency-epsilon"}
    for spec in plan:
        if spec.name in given and not spec.policy.local:
            raise DistreeError(f"--threshold-path: {spec.name} decides at the aggregator; only local policies adapt")
        path, risk = (given[spec.name], None) if spec.name in given else stored.get(spec.name, (None, None))
        if path is None or not spec.policy.local:
            continue
        spec.path, spec.risk = thin_path(path, steps), risk or fallback
        spec.thresholds = spec.path[0]
    if all(s.path is None for s in plan):
        raise DistreeError(f"a latency target needs a local policy with a threshold path: none of "
                           f"{', '.join(s.name for s in plan)} has a certified one in {Path(run_dir) / REPORT} "
                           "(run `distree evaluate` again to store it) and --threshold-path gives none")
    return plan
