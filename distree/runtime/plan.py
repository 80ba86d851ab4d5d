"""Which policies a session runs, in which order, with which thresholds.

Every rank builds the same plan from the same arguments and run directory, so a message names
its policy by its index in the plan and nothing else needs to travel. Thresholds come from the
command line, else from the run's calibration (`distree evaluate` writes the setting chosen on
validation into report.json), else the policy's defaults, which stop nobody early.

Under a latency target a local policy also gets a path: the settings each device may move
along, most conservative first (`with_paths`), and which combinations of per-device settings
it may run. From the run, that is the grid `distree evaluate` certifies and stores in report.json
(`distree.risk_grid`: every combination tested at once, so any of them the runtime moves among
keeps the consistency risk within epsilon). A path given in a JSON file is either such a grid or
a plain list of settings, which certifies nothing: every combination of it may run, and at
most `steps` of its settings, evenly spaced, both ends kept, are used. Every device starts at the
conservative end.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distree.errors import DistreeError
from distree.policies import LearnedGatePolicy, Policy, check_thresholds, make_policy
from distree.risk_grid import GridCertificate
from distree.run_dir import REPORT, calibrated_thresholds, load_learned_gate


@dataclass
class PolicySpec:
    name: str
    policy: Policy
    thresholds: torch.Tensor  # (5,) for exits 2..6
    path: torch.Tensor = None  # (C, 5) settings to adapt along, conservative first; None: static
    grid: GridCertificate = None  # the combinations certified together; None: a given path, every combination runs
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
                out[name] = torch.stack([check_thresholds([float(v) for v in t]) for t in value]), None
        return out
    except (OSError, ValueError, TypeError, AttributeError, KeyError, RuntimeError, DistreeError) as err:
        raise DistreeError(f"--threshold-path {path}: write {{\"POLICY\": [[T2, ..., T6], ...]}}, "
                           f"conservative first, or a grid from report.json ({err})") from None


def certified_grids(run_dir, num_devices: int) -> dict[str, GridCertificate]:
    """{policy: its grid} from the consistency certificate of the run's report.json; {} without one."""
    report = Path(run_dir) / REPORT
    if not report.exists():
        return {}
    for spec in json.loads(report.read_text()).get("certified", []):
        if spec["risk"] == "consistency":
            grids = {e["policy"]: GridCertificate.from_json(e["grid"]) for e in spec["policies"] if e.get("grid")}
            return {name: g for name, g in grids.items() if g.losses.dim() == num_devices}
    return {}


def thin_path(path: torch.Tensor, steps: int) -> torch.Tensor:
    """At most `steps` settings of path (C, 5), evenly spaced by index, both ends kept."""
    keep = torch.linspace(0, len(path) - 1, min(steps, len(path))).round().long().unique()
    return path[keep]  # (C', 5)


def with_paths(plan: list[PolicySpec], run_dir, path_file, steps: int, epsilon: float, delta: float,
               num_devices: int) -> list[PolicySpec]:
    """The plan with a path on every local policy that has one (given in path_file, else the run's
    certified grid); a DistreeError if none has. epsilon and delta are the shadow check's where no
    grid says which risk the settings were certified for."""
    given = read_path_file(path_file, num_devices) if path_file else {}
    unknown = set(given) - {s.name for s in plan}
    if unknown:
        raise DistreeError(f"--threshold-path gives {', '.join(sorted(unknown))}, which --policies does not run")
    stored = certified_grids(run_dir, num_devices)
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
            path, source = grid.path, f"{Path(run_dir) / REPORT}: certified consistency"
        else:
            continue
        spec.path, spec.grid = (path, grid) if grid is not None else (thin_path(path, steps), None)
        spec.risk = ({"epsilon": grid.epsilon, "delta": grid.delta, "source": source} if grid is not None else
                     {"epsilon": epsilon, "delta": delta, "source": "--consistency-epsilon"})
        spec.thresholds = spec.path[0]
    if all(s.path is None for s in plan):
        raise DistreeError(f"a latency target needs a local policy with a threshold path: none of "
                           f"{', '.join(s.name for s in plan)} has a certified grid for {num_devices} devices in "
                           f"{Path(run_dir) / REPORT} (run `distree evaluate` again to store it) and "
                           "--threshold-path gives none")
    return plan
