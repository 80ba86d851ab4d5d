"""The paths a session's local policies adapt along under a latency target.

Every rank builds the same plan (`distree.plan.make_plan`: which policies, in which order,
with which thresholds) from the same arguments and run directory, so a message names its
policy by its index in the plan and nothing else needs to travel.

Under a latency target a local policy also gets a path: the settings each device may move
along, most conservative first (`with_paths`), and which combinations of per-device settings
it may run. From the run, that is the grid `distree evaluate` certified with the served
setting (`distree.run_settings`: the consistency certificate of the same evaluation; every
combination tested at once, so any of them the runtime moves among keeps the consistency risk
within epsilon). A path given in a JSON file is either such a grid or a plain list of settings,
which certifies nothing: every combination of it may run, and at most `steps` of its settings,
evenly spaced, both ends kept, are used. Every device starts at the conservative end.
"""
import json
from pathlib import Path

import torch

from distree.errors import DistreeError
from distree.plan import PolicySpec, parse_threshold_value
from distree.policies import check_thresholds
from distree.risk_grid import GridCertificate
from distree.run_dir import CALIBRATED
from distree.run_settings import read_settings


def read_path_file(path, num_devices: int) -> dict[str, tuple[torch.Tensor, GridCertificate | None]]:
    """{policy: (path (C, 5), its grid or None)} from a JSON file whose values are lists
    [[T2, ..., T6], ...] ("inf" and "-inf" allowed) or grids as report.json stores them."""
    try:
        given = json.loads(Path(path).read_text())
        out = {}
        for name, value in given.items():
            if isinstance(value, dict):
                grid = GridCertificate.from_json(value)
                if grid.losses.dim() != num_devices:
                    raise ValueError(f"the grid of {name} is for {grid.losses.dim()} devices, not {num_devices}")
                out[name] = grid.path, grid
            elif value:
                out[name] = torch.stack([check_thresholds([parse_threshold_value(str(v)) for v in t])
                                         for t in value]), None
        return out
    except (OSError, ValueError, TypeError, AttributeError, KeyError, RuntimeError, DistreeError) as err:
        raise DistreeError(f"--threshold-path {path}: write {{\"POLICY\": [[T2, ..., T6], ...]}}, "
                           f"conservative first, or a grid from report.json ({err})") from None


def certified_grids(run_dir, served: str | None, num_devices: int) -> tuple[dict[str, GridCertificate], dict, str]:
    """({policy: its grid}, {policy: {members: the grid of that surviving set}}, where from) of the
    consistency certificate that goes with the served setting (None: calibrated); ({}, {}, "") where
    the run holds none."""
    source = read_settings(run_dir).grid_source(served or CALIBRATED)
    if source is None:
        return {}, {}, ""
    grids = {name: g for name, g in source.grids.items() if g.losses.dim() == num_devices}
    return grids, source.set_grids, f"{run_dir}: setting {source.name}"


def with_loss_settings(plan: list[PolicySpec], run_dir, served: str | None) -> list[PolicySpec]:
    """The plan with, on every local policy, the setting certified for each surviving set of devices
    (`RunSettings.set_source`: the served setting's own, else its evaluation's certified one), for
    the aggregator to move the devices that are left to when one is lost; none for a run evaluated
    before surviving sets, or one with no certificate."""
    source = read_settings(run_dir).set_source(served or CALIBRATED)
    for spec in plan:
        if spec.policy.local and source is not None:
            sets = source.by_set.get(spec.name, {})
            spec.on_loss = {members: sets[members] for members in sorted(sets, key=lambda m: (len(m), m))}
    return plan


def thin_path(path: torch.Tensor, steps: int) -> torch.Tensor:
    """At most `steps` settings of path (C, 5), evenly spaced by index, both ends kept."""
    keep = torch.linspace(0, len(path) - 1, min(steps, len(path))).round().long().unique()
    return path[keep]  # (C', 5)


def with_paths(plan: list[PolicySpec], run_dir, path_file, steps: int, epsilon: float, delta: float,
               num_devices: int, served: str | None = None) -> list[PolicySpec]:
    """The plan with a path on every local policy that has one (given in path_file, else the grid
    certified with the served setting, None: calibrated); a DistreeError if none has. epsilon and
    delta are the shadow check's where no grid says which risk the settings were certified for."""
    given = read_path_file(path_file, num_devices) if path_file else {}
    unknown = set(given) - {s.name for s in plan}
    if unknown:
        raise DistreeError(f"--threshold-path gives {', '.join(sorted(unknown))}, which --policies does not run")
    stored, stored_sets, stored_source = certified_grids(run_dir, served, num_devices)
    for spec in plan:
        if spec.name in given and not spec.policy.local:
            raise DistreeError(f"--threshold-path: {spec.name} decides at the aggregator; only local policies adapt")
        if not spec.policy.local:
            continue
        if spec.name in given:
            path, grid = given[spec.name]
            source = f"--threshold-path {path_file}"
        elif spec.name in stored:
            grid = stored[spec.name]
            path, source = grid.path, stored_source
            spec.set_grids = stored_sets.get(spec.name, {})  # certified on the same path
        else:
            continue
        spec.path, spec.grid = (path, grid) if grid is not None else (thin_path(path, steps), None)
        spec.risk = ({"epsilon": grid.epsilon, "delta": grid.delta, "source": source} if grid is not None else
                     {"epsilon": epsilon, "delta": delta, "source": "--consistency-epsilon"})
        spec.thresholds = spec.path[0]
    if all(s.path is None for s in plan):
        raise DistreeError(f"a latency target needs a local policy with a threshold path: none of "
                           f"{', '.join(s.name for s in plan)} has a certified grid for {num_devices} devices in "
                           f"the run's settings (run `distree evaluate` again to store it) and "
                           "--threshold-path gives none")
    return plan
