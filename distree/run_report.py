"""An evaluation's report (report.json) read as typed objects: what report.md, the figures, the
CLI's summaries and `distree levers` show.

`distree.evaluation` builds the report as the JSON the file holds; this module is the one place
that knows that file's keys, so the report layer reads names, not strings (as the settings a
run serves are read through `distree.run_settings`). Only what is shown is read; the file keeps
everything else (per-policy latency spreads, FLOPs per stage, timing details) for other tools.
"""
from dataclasses import dataclass, field

from distree.run_dir import CALIBRATED

SHARED_T = "shared T="  # the setting of a row of the paper's shared-T sweep: "shared T=1.08"
MODES = ("streaming", "compacting")


@dataclass
class TimeSaved:
    """Time saved against last exit in one engine mode: measured, and as the FLOPs and each stage's time predict."""

    measured: float
    by_flops: float
    by_stages: float


@dataclass
class PolicyRow:
    """One policy at one setting, on test."""

    policy: str
    setting: str  # CALIBRATED, "last exit", "shared T=1.08", "uniform", ...
    local: bool
    accuracy: float
    flops_reduction: float
    latency_ms_simulated: float
    latency_ms_measured: float | None
    throughput_per_s: float | None
    exit_histogram: list  # (N, 7) samples per student and exit
    saved: dict[str, TimeSaved | None]  # per mode in MODES; None where not timed

    @property
    def shared_t(self) -> float | None:
        """T of a row of the shared-T sweep; None for any other row."""
        return float(self.setting[len(SHARED_T):]) if self.setting.startswith(SHARED_T) else None

    def cost(self, key: str) -> float:
        """The cost the accuracy plots put on x: "flops_reduction" or "latency_ms_simulated"."""
        return getattr(self, key)

    @staticmethod
    def from_json(e: dict) -> "PolicyRow":
        saved = {m: None if e.get(f"time_saved_{m}") is None else
                 TimeSaved(e[f"time_saved_{m}"], e[f"flops_saved_{m}"], e[f"stage_time_saved_{m}"]) for m in MODES}
        return PolicyRow(e["policy"], e["setting"], e["local"], e["accuracy"], e["flops_reduction"],
                         e["latency_ms_simulated"], e["latency_ms_measured"], e.get("throughput_per_s"),
                         e["exit_histogram"], saved)


@dataclass
class CurvePoint:
    """One threshold setting on a policy's accuracy-cost curve, on test."""

    accuracy: float
    flops_reduction: float
    latency_ms_simulated: float

    def cost(self, key: str) -> float:
        return getattr(self, key)


@dataclass
class Goal:
    """The best local policy's calibrated row against the FLOPs target."""

    policy: str | None
    flops_reduction: float
    target: float
    met: bool


@dataclass
class Machinery:
    """One exit decision's cost at B = 1 beyond its stage, against one bare exit-head call."""

    us_per_exit: float
    bare_op_us: float
    over_bare_op: float


@dataclass
class CertifiedPolicy:
    """One policy's certificate for one risk, and its numbers on test where it certified a setting."""

    policy: str
    local: bool
    certified: bool
    candidate: int  # 0-based index on the candidate path; -1: none
    candidates: int
    losses: int
    calibration_samples: int
    p_value: float | None
    next_epsilon: float | None  # the smallest epsilon that would certify the next candidate
    next_samples: int | None  # the calibration samples that would certify it at its loss rate (None: none would;
    # reports from before this field say None too)
    test_accuracy_change: float | None
    test_risk: float | None
    test_flops_reduction: float | None

    @staticmethod
    def from_json(e: dict) -> "CertifiedPolicy":
        test = e.get("test") or {}
        return CertifiedPolicy(e["policy"], e["local"], e["certified"], e["candidate"], e["candidates"], e["losses"],
                               e["calibration_samples"], e["p_value"], e["next_epsilon"], e.get("next_samples"),
                               test.get("accuracy_change"),
                               test.get("risk"), test.get("flops_reduction"))


@dataclass
class ResplitPoint:
    """Over the resplits, at one epsilon: how often the held-out risk exceeded it, how often the certified
    setting's risk over the whole pool did (`risk.resplit_check`), and the mean FLOPs saved."""

    epsilon: float
    exceed_fraction: float
    mean_flops_reduction: float
    pool_exceed_fraction: float | None = None  # None in reports from before it was measured

    @staticmethod
    def from_json(e: dict) -> "ResplitPoint":
        return ResplitPoint(e["epsilon"], e["exceed_fraction"], e["mean_flops_reduction"],
                            e.get("pool_exceed_fraction"))


@dataclass
class ResplitCheck:
    at_epsilon: ResplitPoint  # at the certificate's epsilon
    curve: list[ResplitPoint]  # at every epsilon checked


@dataclass
class SetCertificates:
    """The certificates of one surviving set of students: each local policy's path tested with only
    that set answering, and the resplit check of each (policy -> ResplitPoint at epsilon)."""

    members: list[int]
    policies: list[CertifiedPolicy]
    resplits: dict[str, ResplitPoint]

    @staticmethod
    def from_json(d: dict) -> "SetCertificates":
        return SetCertificates(d["members"], [CertifiedPolicy.from_json(e) for e in d["policies"]],
                               {e["policy"]: ResplitPoint.from_json(e["resplit"]) for e in d["policies"] if "resplit" in e})


@dataclass
class Certificate:
    """What `distree evaluate` certified for one risk."""

    risk: str
    epsilon: float
    delta: float
    calibration_samples: int
    smallest_epsilon: float  # the samples certify no epsilon below it
    max_losses: int  # the most losing samples a setting may have and pass
    policies: list[CertifiedPolicy]
    resplits: dict[str, ResplitCheck]  # policy -> the check; empty without --resplits
    surviving_sets: list[SetCertificates] = field(default_factory=list)  # empty in reports from before them

    @staticmethod
    def from_json(c: dict) -> "Certificate":
        resplits = {name: ResplitCheck(ResplitPoint.from_json(r["at_epsilon"]),
                                       [ResplitPoint.from_json(p) for p in r["curve"]])
                    for name, r in c["resplits"].items()}
        return Certificate(c["risk"], c["epsilon"], c["delta"], c["calibration_samples"], c["smallest_epsilon"],
                           c["max_losses"], [CertifiedPolicy.from_json(e) for e in c["policies"]], resplits,
                           [SetCertificates.from_json(d) for d in c.get("surviving_sets", [])])


@dataclass
class SetAccuracy:
    """One surviving set of students answering alone, on test."""

    members: list[int]
    accuracy: float  # by the set's own aggregator
    accuracy_zeroed: float  # by the healthy aggregator, the missing evidence zeroed
    flops_reduction: float  # of the members' last-exit FLOPs


@dataclass
class Availability:
    """Accuracy expected when each device is up with probability p."""

    p: float
    accuracy: float
    accuracy_zeroed: float


@dataclass
class SurvivingRow:
    """A policy's setting with every surviving set of students (healthy first)."""

    policy: str
    setting: str
    sets: list[SetAccuracy]
    expected: list[Availability]

    @staticmethod
    def from_json(e: dict) -> "SurvivingRow":
        return SurvivingRow(e["policy"], e["setting"], [SetAccuracy(**s) for s in e["sets"]],
                            [Availability(**a) for a in e["expected"]])


@dataclass
class EvaluationReport:
    """report.json, as the report layer reads it."""

    dataset: str
    num_students: int
    teacher_accuracy: float | None
    last_exit_accuracy: float
    last_exit_flops: float  # per sample
    exit_accuracy: list[float]  # every student at exit j, j = 1..7, test
    val_exit_accuracy: list[float]
    max_drop: float  # a fraction
    policies: list[PolicyRow]
    curves: dict[str, list[CurvePoint]]  # policy -> its calibration curve on test
    score_auroc: dict[str, list[float]]  # score -> AUROC at exits 2..6
    oracle_flops_reduction: float
    goal: Goal
    machinery: Machinery | None  # None where it was not measured
    certified: list[Certificate] = field(default_factory=list)
    elapsed_s: float = 0.0  # the evaluation's, or with the demo the whole experiment's
    phases_s: dict[str, float] | None = None  # the demo's seconds per phase (older reports: its evaluation only)
    machine: str | None = None  # what the demo ran on
    surviving: list[SurvivingRow] = field(default_factory=list)  # empty in reports from before surviving sets

    def calibrated(self, policy: str) -> PolicyRow:
        """The policy's main row: its thresholds chosen on val."""
        return next(e for e in self.policies if e.policy == policy and e.setting == CALIBRATED)

    def last_exit(self) -> PolicyRow:
        return next(e for e in self.policies if e.policy == "last-exit")

    @staticmethod
    def from_json(r: dict) -> "EvaluationReport":
        m = r.get("exit_machinery")
        machinery = Machinery(m["machinery_us_per_exit"], m["bare_op_us"], m["machinery_over_bare_op"]) if m else None
        return EvaluationReport(
            r.get("dataset", "?"), r["num_students"], r.get("teacher_accuracy"), r["last_exit_accuracy"],
            r["flops"]["last_exit"], r["exit_accuracy"], r["val_exit_accuracy"], r["max_drop"],
            [PolicyRow.from_json(e) for e in r["policies"]],
            {name: [CurvePoint(p["accuracy"], p["flops_reduction"], p["latency_ms_simulated"]) for p in curve]
             for name, curve in r["curves"].items()},
            r["score_auroc"], r["oracle"]["flops_reduction"], Goal(**r["goal"]), machinery,
            [Certificate.from_json(c) for c in r.get("certified", [])], r["elapsed_s"],
            r.get("phases_s") or ({"evaluation": r["evaluation_s"]} if "evaluation_s" in r else None),
            r.get("machine"), [SurvivingRow.from_json(e) for e in (r.get("surviving_sets") or {}).get("policies", [])])
