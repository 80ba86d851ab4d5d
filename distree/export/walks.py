"""What an export holds: each student of a run as the sync-free walk to its exit, thresholds inside.

The walk is `distree.inference.graph_walk.GraphWalk` over the same `DeviceStep` the engine and
the runtime's devices run, so an artifact takes exactly their decisions: the policy's fused-op
rule with the thresholds baked in as constants. The thresholds come from --threshold, else from
the run's calibration (report.json), as `distree deploy` takes them.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from distree.errors import DistreeError
from distree.inference.evidence import bias_share
from distree.inference.graph_walk import GraphWalk
from distree.inference.step import DeviceStep
from distree.policies import POLICIES, Policy, check_thresholds
from distree.run_dir import (CALIBRATED, REPORT, calibrated_thresholds, load_student_model, read_config,
                             run_splits)
from distree.runtime.config import DEFAULT_POLICIES
from distree.runtime.plan import load_policy

CERTIFIED = "certified-"  # --setting certified-RISK: the thresholds `distree evaluate` certified for RISK


@dataclass
class ExportPlan:
    run: str
    setting: str  # where the thresholds come from: "given", "calibrated", "certified-RISK" or "none" (last-exit)
    policy: Policy
    thresholds: torch.Tensor  # (5,) for exits 2..6
    model: torch.nn.Module  # the DistrEEModel, eval mode
    walks: list  # one GraphWalk per student
    example: torch.Tensor  # (1, C, H, W) float32: the input every artifact takes
    mean: list  # (C,) the normalisation inputs need: x = (pixels / 255 - mean) / std
    std: list


def default_policy() -> str:
    """The first of deploy's default policies that exits early on the device: DistrEE's rule."""
    return next(name for name in DEFAULT_POLICIES if getattr(POLICIES[name], "rule", None))


def certified_thresholds(run_dir, risk: str) -> dict[str, torch.Tensor]:
    """{policy: thresholds} certified for `risk` in the run's report.json; {} where none is."""
    path = Path(run_dir) / REPORT
    if not path.exists():
        return {}
    try:
        specs = [s for s in json.loads(path.read_text()).get("certified") or [] if s["risk"] == risk]
        return {e["policy"]: check_thresholds([float(v) for v in e["thresholds"]])
                for spec in specs for e in spec["policies"] if e["certified"]}
    except (ValueError, KeyError, TypeError) as err:
        raise DistreeError(f"cannot read the certified thresholds in {path}: {err!r}") from None


def choose_thresholds(name: str, given: dict, run_dir, setting: str = CALIBRATED) -> torch.Tensor:
    """The thresholds (5,) of policy `name`: given, else the report's `setting`
    ("calibrated" or "certified-RISK"), else an error."""
    if set(given) - {name}:
        raise DistreeError(f"--threshold given for {', '.join(sorted(set(given) - {name}))}, "
                           f"but the export's policy is {name!r}")
    if name in given:
        return given[name]
    if setting == CALIBRATED:
        found = calibrated_thresholds(run_dir)
    elif setting.startswith(CERTIFIED):
        found = certified_thresholds(run_dir, setting[len(CERTIFIED):])
    else:
        raise DistreeError(f"unknown --setting {setting!r}; write {CALIBRATED} or {CERTIFIED}RISK "
                           f"(e.g. {CERTIFIED}accuracy)")
    if name not in found:
        raise DistreeError(f"{run_dir} has no {setting} thresholds for {name!r} in report.json; "
                           f"run `distree evaluate --run {run_dir}` or give --threshold {name}=T2,...,T6")
    return found[name]


def check_exportable(policy: Policy) -> None:
    """A one-line error for a policy an artifact cannot decide alone."""
    if not policy.local:
        raise DistreeError(f"policy {policy.name!r} decides on the aggregated logits, so it needs the aggregator "
                           "at every stage and cannot run on a device alone; export a local policy (e.g. distree)")


def make_plan(run_dir, policy_name: str | None = None, given: dict | None = None,
              setting: str = CALIBRATED) -> ExportPlan:
    """The walks of every student of run_dir under the policy (default: default_policy), with the
    given thresholds, else the report's `setting`."""
    config = read_config(run_dir)
    model = load_student_model(run_dir)
    name = policy_name or default_policy()
    policy = load_policy(name, run_dir)
    check_exportable(policy)
    given = given or {}
    if policy.exits_early:
        thresholds = choose_thresholds(name, given, run_dir, setting)
        setting = "given" if name in given else setting
    else:
        thresholds, setting = policy.default_thresholds(), "none"
    test = run_splits(run_dir, config).test
    example = test.batch(torch.arange(1))[0]  # (1, C, H, W)
    share = bias_share(model)
    walks = []
    for i, student in enumerate(model.students):
        try:
            walks.append(GraphWalk(DeviceStep(student, i, policy, thresholds, share), example).eval())
        except ValueError:  # GraphWalk: the policy decides in Python, outside the fused op
            fused = ", ".join(n for n, cls in POLICIES.items() if getattr(cls, "rule", None))
            raise DistreeError(f"policy {name!r} is not decided by the exit gate (the fused op), so an exported walk "
                               f"cannot take its decision; export one of {fused}, or last-exit") from None
    return ExportPlan(str(run_dir), setting, policy, thresholds, model, walks, example,
                      test.mean.flatten().tolist(), test.std.flatten().tolist())
