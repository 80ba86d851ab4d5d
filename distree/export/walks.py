"""What an export holds: each student of a run as the sync-free walk to its exit, thresholds inside.

The walk is `distree.inference.graph_walk.GraphWalk` over the same `DeviceStep` the engine and
the runtime's devices run, so an artifact takes exactly their decisions: the policy's fused-op
rule with the thresholds baked in as constants. The thresholds come from the plan `distree
deploy` makes too (`distree.plan.make_plan`): --threshold, else the run's named --setting
(calibrated by default).
"""
from dataclasses import dataclass

import torch

from distree.errors import DistreeError
from distree.inference.evidence import bias_share
from distree.inference.graph_walk import GraphWalk
from distree.inference.step import DeviceStep
from distree.plan import DEFAULT, DEFAULT_POLICIES, make_plan
from distree.policies import POLICIES, Policy
from distree.run_dir import load_student_model, read_config, run_splits


@dataclass
class ExportPlan:
    run: str
    setting: str  # where the thresholds come from: "given", the run's setting's name, or "none" (last-exit)
    gate: str  # the run's learned gate file the plan's policy uses, relative to the run
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


def check_exportable(policy: Policy) -> None:
    """A one-line error for a policy an artifact cannot decide alone."""
    if not policy.local:
        raise DistreeError(f"policy {policy.name!r} decides on the aggregated logits, so it needs the aggregator "
                           "at every stage and cannot run on a device alone; export a local policy (e.g. distree)")


def export_plan(run_dir, policy_name: str | None = None, given: dict | None = None,
                setting: str | None = None) -> ExportPlan:
    """The walks of every student of run_dir under the policy (default: default_policy), with the
    given thresholds, else the run's `setting` (None: calibrated)."""
    config = read_config(run_dir)
    model = load_student_model(run_dir)
    name = policy_name or default_policy()
    given = given or {}
    if set(given) - {name}:
        raise DistreeError(f"--threshold given for {', '.join(sorted(set(given) - {name}))}, "
                           f"but the export's policy is {name!r}")
    spec = make_plan([name], given, run_dir, setting)[0]
    policy, thresholds = spec.policy, spec.thresholds
    check_exportable(policy)
    if not policy.exits_early:
        source = "none"
    elif spec.source == DEFAULT:
        raise DistreeError(f"{run_dir} has no calibrated thresholds for {name!r}; run `distree evaluate --run "
                           f"{run_dir}`, pick a --setting or give --threshold {name}=T2,...,T6")
    else:
        source = spec.source
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
    return ExportPlan(str(run_dir), source, spec.gate, policy, thresholds, model, walks, example,
                      list(test.preprocessing.mean), list(test.preprocessing.std))
