"""Which policies a deployment or an export serves, with which thresholds: the one plan both make.

Thresholds come from the command line (`POLICY=T` or `POLICY=T2,...,T6`, the one syntax of
`evaluate --threshold`, `deploy --threshold` and `export --threshold`), else from the run's
setting chosen by name (`distree.run_settings`; `calibrated` unless --setting names another),
else the policy's defaults, which stop nobody early. A setting named explicitly must hold every
policy that exits early; the default one falls back to the defaults for a policy it lacks, as
serving did before any evaluation.
"""
import argparse
import math
from dataclasses import dataclass, field

import torch

from distree.errors import DistreeError
from distree.policies import POLICIES, LearnedGatePolicy, Policy, check_thresholds, make_policy
from distree.risk_grid import GridCertificate
from distree.run_dir import CALIBRATED, GATE, load_learned_gate
from distree.run_settings import read_settings

DEFAULT_POLICIES = ("distree", "last-exit", "confidence", "entropy")  # what `distree deploy` serves by default
GIVEN, DEFAULT = "given", "default"  # PolicySpec.source of thresholds from the command line, or the policy's own


@dataclass
class PolicySpec:
    name: str
    policy: Policy
    thresholds: torch.Tensor  # (5,) for exits 2..6
    source: str = DEFAULT  # where the thresholds come from: GIVEN, a setting's name, or DEFAULT
    gate: str = GATE  # the learned gate file the policy was loaded from (learned-gate), relative to the run
    path: torch.Tensor = None  # (C, 5) settings to adapt along, conservative first; None: static
    grid: GridCertificate = None  # the combinations certified together; None: a given path, every combination runs
    risk: dict = field(default_factory=dict)  # the consistency risk the shadow check holds: epsilon, delta, source
    on_loss: dict = field(default_factory=dict)  # members -> (5,): the setting certified for that surviving set
    set_grids: dict = field(default_factory=dict)  # members -> GridCertificate: on grid's path, for that set

    def settings(self) -> torch.Tensor | None:
        """(C', 5) every setting a device may be told to take, a THRESHOLDS message's index into it: the
        path (or, static, the served thresholds), then the setting of each surviving set in on_loss;
        None where the policy has neither."""
        if self.path is None and not self.on_loss:
            return None
        base = self.path if self.path is not None else self.thresholds[None]  # (C, 5)
        return torch.cat([base, *(t[None] for t in self.on_loss.values())])

    def loss_index(self, members: tuple) -> int | None:
        """The index in settings() of the setting certified for the surviving set members; None if none is."""
        if members not in self.on_loss:
            return None
        return (1 if self.path is None else len(self.path)) + list(self.on_loss).index(members)


def parse_threshold_value(text: str) -> float:
    """One threshold as typed: a number, or inf / -inf (every rule's thresholds that stop no sample
    and every sample); NaN, and a number float32 cannot hold, are refused."""
    value = float(text)
    if math.isnan(value):
        raise ValueError("NaN is no threshold")
    written_inf = text.strip().lower().lstrip("+-") in ("inf", "infinity")
    if not written_inf and not math.isfinite(float(torch.tensor(value, dtype=torch.float32))):
        raise ValueError(f"{text.strip()} is outside float32's range (write inf or -inf for an infinite threshold)")
    return value


def parse_thresholds(items: list[str], option: str = "--threshold") -> dict[str, torch.Tensor]:
    """{policy: thresholds (5,)} from ["distree=1.1", "confidence=0.9,0.9,0.8,0.8,0.7", ...]."""
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        parsed, problem = None, "" if name and sep else "no POLICY= before the values"
        try:
            parsed = None if problem else [parse_threshold_value(v) for v in values.split(",")]
        except ValueError as err:
            problem = str(err)
        if problem:
            raise DistreeError(f"bad {option} {item!r} ({problem}); write POLICY=T or POLICY=T2,T3,T4,T5,T6, "
                               "numbers, inf or -inf")
        if name not in POLICIES:
            raise DistreeError(f"bad {option} {item!r}: unknown policy {name!r}; choose from {', '.join(POLICIES)}")
        if name in out:
            raise DistreeError(f"{option} given twice for {name}")
        out[name] = check_thresholds(parsed[0] if len(parsed) == 1 else parsed)
    return out


def add_plan_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """--threshold and --setting, as deploy and export take them; `verb` says what happens to them."""
    p.add_argument("--threshold", dest="thresholds", action="append", default=[], metavar="POLICY=T[,...]",
                   help="thresholds for exits 2..6 (one value or five; inf stops no sample, -inf every sample "
                        "for rules that stop above T); default: the run's --setting")
    p.add_argument("--setting", default=None, metavar="NAME",
                   help=f"the run's named thresholds to {verb} where --threshold gives none: {CALIBRATED} "
                        "(default), certified-RISK (e.g. certified-accuracy), or NAME:... from `distree evaluate "
                        "--name NAME`; report.md lists them")


def load_policy(name: str, run_dir, gate: str = GATE) -> Policy:
    """The policy called name; the learned gate comes fitted from the run directory (`gate`: its file)."""
    return load_learned_gate(run_dir, gate) if name == LearnedGatePolicy.name else make_policy(name)


def make_plan(names: list[str], given: dict[str, torch.Tensor], run_dir, setting: str | None = None) -> list[PolicySpec]:
    """The policies in order, each with its given thresholds, else the run's setting (`calibrated`
    where setting is None), else its defaults (not for a setting named explicitly)."""
    unknown = set(given) - set(names)
    if unknown:
        raise DistreeError(f"--threshold given for {', '.join(sorted(unknown))}, which is not among the policies "
                           f"served ({', '.join(names)})")
    held = read_settings(run_dir)
    if setting is None:
        chosen = held.settings.get(CALIBRATED)
    else:
        chosen = held.get(setting)
    gate = chosen.gate if chosen is not None else GATE
    plan = []
    for name in names:
        policy = load_policy(name, run_dir, gate)
        if name in given:
            plan.append(PolicySpec(name, policy, given[name], GIVEN, gate))
        elif chosen is not None and name in chosen.thresholds:
            plan.append(PolicySpec(name, policy, chosen.thresholds[name], chosen.name, gate))
        elif setting is not None and policy.exits_early:
            raise DistreeError(f"the run's setting {setting!r} holds no thresholds for {name!r} (it holds "
                               f"{', '.join(chosen.thresholds) or 'none'}); give --threshold {name}=T2,...,T6 or "
                               "serve another policy")
        else:
            plan.append(PolicySpec(name, policy, policy.default_thresholds(), DEFAULT, gate))
    return plan
