"""The lever study: which training choice lets a local exit rule find the savings that exist.

Each lever retrains the students of a finished run (same teacher, same partition, a shorter
schedule, one change to the recipe) and evaluates them like `distree evaluate` does, without
timing. The table puts each lever's last-exit accuracy beside what every policy saves within
the allowed drop, what the local policies save at the settings certified for each risk (the
figure of merit: a saving a user can trust), the oracle's saving, and how well the DistrEE score
ranks good exits (AUROC).
"""
import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from distree.errors import DistreeError
from distree.evaluation import EvaluateConfig, evaluate_run
from distree.run_dir import PARTITION, TEACHER, read_config, write_config
from distree.run_report import EvaluationReport
from distree.training.students import train_students

# One change to the students' recipe per lever, as {config section: {key: value}}.
LEVERS = {
    "as configured": {},
    "no failout": {"loss": {"failout": 0.0}},
    "no mixed-exit term": {"loss": {"mixed_weight": 0.0}},
    "no attention transfer": {"loss": {"beta": 0.0}},
    "intermediate exits weighted x2": {"loss": {"exit_weights": [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0]}},
    "projected exit space": {"model": {"exit_space": "projected"}},
}
COMPARED = ("distree", "similarity", "local-confidence", "learned-gate", "random", "confidence")
CERTIFIED = ("local-confidence", "learned-gate")  # the local policies whose certified savings the table shows


@dataclass
class LeverConfig:
    epochs: int = 1  # of each lever's student training
    levers: list[str] = field(default_factory=lambda: list(LEVERS))
    evaluation: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(gate_samples=2000, measure_time=False))


def lever_config(base: dict, changes: dict, epochs: int) -> dict:
    """The base run's config with one lever's changes and the study's number of epochs."""
    config = copy.deepcopy(base)
    students = config["students"]
    for section, values in changes.items():
        students[section].update(values)
    students["optim"]["epochs"] = epochs
    return config


def prepare(base_dir: Path, lever_dir: Path, config: dict) -> None:
    """A run directory holding the base run's teacher and partition, and the lever's config."""
    lever_dir.mkdir(parents=True, exist_ok=True)
    for name in (TEACHER, PARTITION):
        if not (base_dir / name).exists():
            raise DistreeError(f"{base_dir} lacks {name}; the lever study retrains the students of a finished run")
        shutil.copy2(base_dir / name, lever_dir / name)
    write_config(lever_dir, config)


def lever_row(name: str, report: EvaluationReport) -> dict:
    """One lever's line of the table."""
    last = report.last_exit_accuracy
    row = {"lever": name, "last_exit_accuracy": last, "exit_accuracy": report.exit_accuracy,
           "oracle_flops_reduction": report.oracle_flops_reduction, "distree_auroc": report.score_auroc["distree"]}
    for policy in COMPARED:
        main = report.calibrated(policy)
        row[policy] = {"flops_reduction": main.flops_reduction, "accuracy_change": main.accuracy - last}
    row["certified"] = [{"risk": c.risk, "epsilon": c.epsilon,
                         **{e.policy: e.test_flops_reduction for e in c.policies if e.policy in CERTIFIED}}
                        for c in report.certified]  # None where a policy certifies nothing
    return row


def run_levers(base_dir, out, config: LeverConfig = LeverConfig(), log=print) -> list[dict]:
    """Retrains and evaluates the students once per lever; writes levers.json and levers.md into out."""
    base_dir, out = Path(base_dir), Path(out)
    unknown = set(config.levers) - set(LEVERS)
    if unknown:
        raise DistreeError(f"unknown lever(s) {', '.join(sorted(unknown))}; choose from {', '.join(LEVERS)}")
    base = read_config(base_dir)
    rows = []
    for name in config.levers:
        lever_dir = out / name.replace(" ", "-")
        run_config = lever_config(base, LEVERS[name], config.epochs)
        prepare(base_dir, lever_dir, run_config)
        train_students(lever_dir, run_config, resume=False)
        rows.append(lever_row(name, evaluate_run(lever_dir, config.evaluation).shown()))
        log(f"lever {name!r} done")
    (out / "levers.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "levers.md").write_text(lever_table(rows) + "\n")
    return rows


def lever_table(rows: list[dict]) -> str:
    """Markdown: per lever, last-exit accuracy, each policy's FLOPs saved (accuracy change in points) and
    the certified FLOPs saved of the local policies per risk."""
    risks = [f"certified {c['risk']} <= {100 * c['epsilon']:g}%: " + " / ".join(CERTIFIED)
             for c in rows[0].get("certified", [])] if rows else []
    head = ["lever", "last exit"] + list(COMPARED) + risks + ["oracle", "DistrEE score AUROC (exits 2..6)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["lever"], f"{100 * r['last_exit_accuracy']:.2f}%"]
        cells += [f"{100 * r[p]['flops_reduction']:.1f}% ({100 * r[p]['accuracy_change']:+.2f})" for p in COMPARED]
        cells += [" / ".join("none" if c.get(p) is None else f"{100 * c[p]:.1f}%" for p in CERTIFIED)
                  for c in r.get("certified", [])]
        cells.append(f"{100 * r['oracle_flops_reduction']:.1f}%")
        cells.append(" ".join("-" if a is None else f"{a:.2f}" for a in r["distree_auroc"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
