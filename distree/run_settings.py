"""The settings a run serves: named thresholds per policy, kept in the run's settings.json.

`distree evaluate` chooses thresholds; `distree deploy` and `distree export` serve them. Between
the two, the settings are named and stay put: an evaluation adds settings under names the run
does not hold yet and never replaces one it holds, so evaluating again (other options, another
risk) changes nothing a later deploy or export uses unless the user picks the new setting by
name (`--setting`). The names:

- `calibrated`: each policy's least-FLOPs thresholds within --max-drop on validation; what deploy
  and export serve when no --setting is given.
- `certified-RISK` (e.g. `certified-accuracy`): the thresholds certified for that risk, for
  every surviving set of students the thresholds certified with only that set answering (what
  the runtime moves the devices that are left to when one is lost), and for
  `certified-consistency` the grids of per-device settings the adaptive runtime may combine.
- `NAME:calibrated`, `NAME:certified-RISK`: the same from `distree evaluate --name NAME`, whose
  report, figures and learned gate are kept in RUN/evaluations/NAME/.

Settings belong to the students they were chosen for: an evaluation of students other than the
stored settings' (retrained, students.pt changed) starts the file afresh. A run evaluated before
settings.json existed serves from its report.json as it did: the settings are read from there
(and kept in settings.json by the next evaluation, before anything is added).

This module is the one reader of what later commands read back from an evaluation; the
runtime, the export and the report never index report.json or settings.json themselves.
"""
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distree.errors import DistreeError
from distree.policies import check_thresholds
from distree.risk_grid import GridCertificate
from distree.run_dir import CALIBRATED, GATE, REPORT, STUDENTS, jsonable_thresholds, sha256

SETTINGS = "settings.json"
EVALUATIONS = "evaluations"  # RUN/evaluations/NAME/: a named evaluation's report, figures and learned gate
CERTIFIED = "certified-"  # certified-RISK: the thresholds `distree evaluate` certified for RISK
SEPARATOR = ":"  # NAME:calibrated, the setting of a named evaluation
KIND = "distree-settings"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class ServedSetting:
    """One named setting: the thresholds of every policy it holds, and where they come from."""

    name: str  # "calibrated", "certified-accuracy", "NAME:calibrated", ...
    thresholds: dict[str, torch.Tensor]  # policy -> (5,) for exits 2..6
    grids: dict[str, GridCertificate] = field(default_factory=dict)  # policy -> combinations certified together
    options: dict = field(default_factory=dict)  # what chose it: max_drop, or risk, epsilon and delta
    gate: str = GATE  # the learned gate these thresholds are for, relative to the run directory
    by_set: dict[str, dict[tuple, torch.Tensor]] = field(default_factory=dict)  # policy -> members -> (5,) certified
    set_grids: dict[str, dict[tuple, GridCertificate]] = field(default_factory=dict)  # policy -> members -> its grid

    @property
    def evaluation(self) -> str | None:
        """The named evaluation the setting comes from; None for an unnamed one."""
        prefix, sep, _ = self.name.rpartition(SEPARATOR)
        return prefix if sep else None

    def to_json(self) -> dict:
        return {"name": self.name, "options": self.options, "gate": self.gate,
                "thresholds": {p: jsonable_thresholds(t) for p, t in self.thresholds.items()},
                "grids": {p: g.to_json() for p, g in self.grids.items()},
                "by_set": {p: [{"members": list(m), "thresholds": jsonable_thresholds(t)} for m, t in sets.items()]
                           for p, sets in self.by_set.items()},
                "set_grids": {p: [g.to_json() for g in sets.values()] for p, sets in self.set_grids.items()}}

    @staticmethod
    def from_json(entry: dict) -> "ServedSetting":
        by_set = {p: {tuple(d["members"]): _thresholds(d["thresholds"]) for d in sets}
                  for p, sets in entry.get("by_set", {}).items()}
        set_grids = {p: {g.members: g for g in map(GridCertificate.from_json, grids)}
                     for p, grids in entry.get("set_grids", {}).items()}
        return ServedSetting(entry["name"], {p: _thresholds(t) for p, t in entry["thresholds"].items()},
                             {p: GridCertificate.from_json(g) for p, g in entry.get("grids", {}).items()},
                             dict(entry.get("options", {})), entry.get("gate", GATE), by_set, set_grids)


@dataclass
class RunSettings:
    """Every setting a run holds, by name, and the students they were chosen for."""

    settings: dict[str, ServedSetting] = field(default_factory=dict)
    students_sha256: str | None = None  # None: read from a report.json written before settings.json

    def holds_for(self, digest: str) -> bool:
        """Whether it holds settings chosen for the students whose students.pt has this sha256
        (those read from an old report.json are taken to be)."""
        return bool(self.settings) and self.students_sha256 in (None, digest)

    def get(self, name: str) -> ServedSetting:
        """The setting called name, or an error listing the ones the run holds."""
        if name not in self.settings:
            held = ", ".join(self.settings) or "none (run `distree evaluate` first)"
            raise DistreeError(f"the run has no setting {name!r}; it holds: {held}")
        return self.settings[name]

    def set_source(self, served: str) -> ServedSetting | None:
        """The certified setting whose thresholds per surviving set go with `served`: served itself if
        it is certified, else its evaluation's certified-accuracy, else its certified-consistency."""
        if served in self.settings and self.settings[served].by_set:
            return self.settings[served]
        prefix, sep, _ = served.rpartition(SEPARATOR)
        evaluation = prefix if sep else None
        for risk in ("accuracy", "consistency"):
            found = self.settings.get(setting_name(evaluation, f"{CERTIFIED}{risk}"))
            if found is not None and found.by_set:
                return found
        return None

    def grid_source(self, served: str) -> ServedSetting | None:
        """The consistency certificate of the evaluation that chose `served`: its grids are the
        combinations the adaptive runtime may move among."""
        prefix, sep, _ = served.rpartition(SEPARATOR)
        return self.settings.get(setting_name(prefix if sep else None, f"{CERTIFIED}consistency"))


def setting_name(evaluation: str | None, kind: str) -> str:
    """The name of a setting of kind `kind` ("calibrated", "certified-RISK") from an evaluation."""
    return kind if evaluation is None else f"{evaluation}{SEPARATOR}{kind}"


def check_evaluation_name(name: str) -> str:
    """A named evaluation's name: letters, digits, '_', '.', '-'; it names a folder and prefixes settings."""
    if not _NAME.fullmatch(name):
        raise DistreeError(f"bad --name {name!r}: use letters, digits, '_', '.' and '-', starting with a "
                           "letter or digit")
    return name


def evaluation_dir(run_dir, name: str | None) -> Path:
    """Where an evaluation's report and figures go: the run itself, or RUN/evaluations/NAME."""
    return Path(run_dir) if name is None else Path(run_dir) / EVALUATIONS / name


def students_sha256(run_dir) -> str:
    return sha256(Path(run_dir) / STUDENTS)


def _thresholds(values) -> torch.Tensor:
    return check_thresholds([float(v) for v in values])


def settings_from_report(report: dict) -> dict[str, ServedSetting]:
    """The settings an (unnamed) evaluation's report holds: `calibrated` and `certified-RISK` per risk."""
    calibrated = {e["policy"]: _thresholds(e["thresholds"]) for e in report["policies"] if e["setting"] == CALIBRATED}
    out = {CALIBRATED: ServedSetting(CALIBRATED, calibrated, options={"max_drop": report.get("max_drop")})} \
        if calibrated else {}
    for spec in report.get("certified") or []:
        rows = [e for e in spec["policies"] if e["certified"]]
        name = f"{CERTIFIED}{spec['risk']}"
        by_set, set_grids = {}, {}
        for d in spec.get("surviving_sets", []):
            for e in d["policies"]:
                if e["certified"]:
                    by_set.setdefault(e["policy"], {})[tuple(d["members"])] = _thresholds(e["thresholds"])
                if e.get("grid"):
                    set_grids.setdefault(e["policy"], {})[tuple(d["members"])] = GridCertificate.from_json(e["grid"])
        out[name] = ServedSetting(name, {e["policy"]: _thresholds(e["thresholds"]) for e in rows},
                            {e["policy"]: GridCertificate.from_json(e["grid"]) for e in spec["policies"]
                             if e.get("grid")},
                            {"risk": spec["risk"], "epsilon": spec["epsilon"], "delta": spec["delta"]},
                            by_set=by_set, set_grids=set_grids)
    return out


def read_settings(run_dir) -> RunSettings:
    """The run's settings: settings.json, else those of a report.json written before it, else none."""
    path, report = Path(run_dir) / SETTINGS, Path(run_dir) / REPORT
    try:
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("kind") != KIND:
                raise ValueError(f"not a {KIND} file")
            return RunSettings({s["name"]: ServedSetting.from_json(s) for s in data["settings"]}, data["students_sha256"])
        if report.exists():
            return RunSettings(settings_from_report(json.loads(report.read_text())))
        return RunSettings()
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, DistreeError) as err:
        raise DistreeError(f"cannot read the settings in {path if path.exists() else report}: {err!r}") from None


def write_settings(run_dir, settings: RunSettings) -> Path:
    """settings.json, written atomically (a temporary file, then a rename)."""
    path = Path(run_dir) / SETTINGS
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps({"kind": KIND, "students_sha256": settings.students_sha256,
                               "settings": [s.to_json() for s in settings.settings.values()]},
                              indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


@dataclass
class Stored:
    """What storing an evaluation's settings did: which it added, which it kept as they were."""

    settings: RunSettings  # every setting the run now holds
    added: list[str]
    kept: list[str]  # names the run held already with other thresholds: not replaced
    fresh: bool  # the run held no settings for these students: the evaluation's are the first


def same(a: ServedSetting, b: ServedSetting) -> bool:
    """Whether two settings hold the same thresholds for the same policies."""
    return a.thresholds.keys() == b.thresholds.keys() and all(
        torch.equal(a.thresholds[p], b.thresholds[p]) for p in a.thresholds)


def store_settings(run_dir, new: list[ServedSetting]) -> Stored:
    """Adds an evaluation's settings to the run under names it does not hold; never replaces one.

    Settings stored for other students (students.pt changed since) are dropped first.
    """
    held, digest = read_settings(run_dir), students_sha256(run_dir)
    fresh = not held.holds_for(digest)
    settings = {} if fresh else dict(held.settings)
    added = [s.name for s in new if s.name not in settings]
    kept = [s.name for s in new if s.name in settings and not same(s, settings[s.name])]
    settings.update({s.name: s for s in new if s.name in added})
    stored = RunSettings(settings, digest)
    write_settings(run_dir, stored)
    return Stored(stored, added, kept, fresh)

