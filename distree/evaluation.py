"""The evaluation behind `distree evaluate`: every policy calibrated on val, measured on test.

It computes the report's numbers (a dict, saved as report.json); `distree.report` presents them.

The model runs once per split (evidence); each policy's thresholds are chosen on the validation
split only, and the test split only measures: accuracy, FLOPs, simulated latency, exits, and
the wall-clock time of the engine for each policy's main setting. Certified settings
(`distree.risk`) are ordered on training-split evidence and tested on val; the resplit check pools
val and test, by design, to see whether the guarantee holds on samples the calibration never saw.
"""
import hashlib
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from distree.calibration import PAPER_SWEEP, CalibrationConfig, best_within, calibration_front, least_flops
from distree.costs import CostConfig, FlopTable, count_flops
from distree.data import forward_batch
from distree.errors import DistreeError
from distree.inference.engine import InferenceEngine
from distree.inference.evidence import Evidence, bias_share, collect_evidence
from distree.inference.outcome import Outcome, PolicyEvaluator
from distree.inference.step import DeviceStep
from distree.inference.timing import TimingConfig, exit_machinery, stage_seconds, time_engines
from distree.policies import POLICIES, Policy, check_thresholds
from distree.policies.learned_gate import GateConfig, LearnedGatePolicy, train_learned_gate
from distree.policies.random_exit import RandomPolicy, matching_thresholds, uniform_thresholds
from distree.inference.degraded import AVAILABILITIES, expected_accuracy, set_evaluator, set_outcome
from distree.inference.diagnostics import flops_saved, oracle, score_aurocs
from distree.models.surviving_sets import SurvivingSets, fit_surviving_sets, proper_subsets
from distree.risk import (PathLosses, RiskSpec, candidate_path, certify, max_losses, path_losses, resplit_check,
                          upper_bound)
from distree.risk_grid import GridCertificate, certify_grid, policy_grid
from distree.run_dir import (CALIBRATED, GATE, class_names, jsonable_thresholds, load_learned_gate,
                             load_student_model, load_surviving_sets, read_config, run_splits, save_learned_gate,
                             save_surviving_sets, teacher_accuracy)
from distree.run_report import EvaluationReport
from distree.run_settings import (Stored, check_evaluation_name, evaluation_dir, read_settings, setting_name,
                                  settings_from_report, store_settings, students_sha256)


@dataclass
class EvaluateConfig:
    batch_size: int = forward_batch()  # of evidence collection
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    gate_samples: int = 5000  # training images the learned gate is fitted on
    flops_budget: float | None = None  # (b): the most accurate setting within this fraction of last-exit FLOPs
    latency_budget_ms: float | None = None  # (b): ... within this simulated latency
    thresholds: dict[str, torch.Tensor] = field(default_factory=dict)  # policy -> (5,): extra settings, as given
    curve_points: int = 40  # points per policy on the accuracy-FLOPs curves
    seed: int = 0  # of the random policy
    timing: TimingConfig = field(default_factory=TimingConfig)
    measure_time: bool = True  # time the engine (the lever study leaves it out)
    costs: CostConfig = field(default_factory=CostConfig)
    risks: list[RiskSpec] = field(default_factory=lambda: [RiskSpec("accuracy", 0.005, 0.1),
                                                           RiskSpec("consistency", 0.01, 0.1)])
    risk_candidates: int = 64  # candidates per policy on the certification path, at most
    grid_steps: int = 8  # settings per device of the adaptive runtime's certified combinations, at most
    risk_path: CalibrationConfig = field(default_factory=lambda: CalibrationConfig(quantiles=16, lambdas=8))  # its front
    resplits: int = 200  # random calibration / held-out halves of val + test in the guarantee check; 0: none
    resplit_epsilons: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02, 0.04)  # the check's curve


@dataclass
class Setting:
    policy: str
    name: str  # which setting of the policy, e.g. "calibrated", "shared T=1.08"
    thresholds: torch.Tensor  # (5,)


@dataclass
class Evaluation:
    """The report's numbers, and the raw test scores its score-distribution figure needs."""

    report: dict
    test_scores: dict[str, torch.Tensor]  # policy -> (N, 5, B)
    last_right: torch.Tensor  # (B,) bool: whether exit 7 (all students) is right
    gate: LearnedGatePolicy  # as fitted on the training split
    surviving: SurvivingSets  # the aggregator for every proper subset of the students, fitted on the training split
    out: Path = None  # where its report goes: the run, or RUN/evaluations/NAME
    stored: Stored = None  # what storing its settings in the run did

    def shown(self) -> EvaluationReport:
        """The report as report.md, the figures and the CLI read it (`distree.run_report`)."""
        return EvaluationReport.from_json(self.report)


def build_policies(model, train_split, config: EvaluateConfig) -> tuple[dict[str, Policy], Evidence]:
    """Every policy, and the training-split evidence the learned gate is fitted on here (which also
    orders the certification candidates)."""
    train = collect_evidence(model, train_split, config.batch_size, config.gate_samples)
    gate = train_learned_gate(train, config.gate)
    made = {"learned-gate": gate, "random": RandomPolicy(config.seed)}
    return {name: made.get(name) or cls() for name, cls in POLICIES.items()}, train


def calibrated_settings(name: str, front: list[Outcome], last: Outcome, config: EvaluateConfig) -> list[Setting]:
    """Goal (a) and, when budgets are given, goal (b), from a policy's calibration front on val."""
    out = [Setting(name, CALIBRATED, least_flops(front, last.accuracy, config.calibration.max_drop).thresholds)]
    if config.flops_budget is not None:
        best = best_within(front, flops=config.flops_budget * last.flops)
        out.append(Setting(name, f"FLOPs <= {config.flops_budget:.0%}", best.thresholds))
    if config.latency_budget_ms is not None:
        best = best_within(front, latency_s=config.latency_budget_ms / 1e3)
        out.append(Setting(name, f"latency <= {config.latency_budget_ms:g} ms", best.thresholds))
    return out


def extra_settings(val_eval: dict[str, PolicyEvaluator], main: list[Setting], config: EvaluateConfig) -> list[Setting]:
    """Random (uniform, and matched to DistrEE's exits), the paper's shared-T sweep, given thresholds."""
    distree_t = next(s.thresholds for s in main if s.policy == "distree")
    histogram = val_eval["distree"](distree_t).histogram.sum(0)  # (7,) pooled over students
    out = [Setting("random", "uniform", uniform_thresholds()),
           Setting("random", "matched to distree", matching_thresholds(histogram))]
    out += [Setting("distree", f"shared T={t:g}", torch.full((5,), t)) for t in PAPER_SWEEP]
    out += [Setting(name, "given", t) for name, t in config.thresholds.items()]
    return out


def thin(front: list[Outcome], count: int) -> list[Outcome]:
    """At most `count` points of a front, evenly spaced, ends included."""
    if len(front) <= count:
        return front
    idx = torch.linspace(0, len(front) - 1, count).round().long().unique()
    return [front[i] for i in idx.tolist()]


def curve_point(o: Outcome) -> dict:
    return {"thresholds": jsonable_thresholds(o.thresholds), "accuracy": o.accuracy, "flops_reduction": o.flops_reduction,
            "latency_ms_simulated": 1e3 * o.latency_s}


def entry(s: Setting, on_val: Outcome, on_test: Outcome, policy: Policy) -> dict:
    return {"policy": s.policy, "setting": s.name, "local": policy.local, "thresholds": jsonable_thresholds(s.thresholds),
            "accuracy": on_test.accuracy, "val_accuracy": on_val.accuracy,
            "flops_reduction": on_test.flops_reduction, "val_flops_reduction": on_val.flops_reduction,
            "latency_ms_simulated": 1e3 * on_test.latency_s, "latency_ms_measured": None,
            "exit_histogram": on_test.histogram.tolist()}


def timed_settings(settings: list[Setting]) -> list[Setting]:
    """The settings whose engine is timed: each policy's main one, last-exit and uniform random."""
    return [s for s in settings if s.name in (CALIBRATED, "uniform") or s.policy == "last-exit"]


def measure(model, policies, settings: list[Setting], split, test_eval: dict, flops: FlopTable,
            config: TimingConfig) -> dict[str, dict]:
    """Wall-clock timing per setting, with the time saved against last-exit and what FLOPs predicted."""
    m = max(config.compacting_samples, config.streaming_samples)
    x, _ = split.batch(torch.arange(min(m, len(split))))
    x = x.contiguous(memory_format=torch.channels_last)  # (M, C, 32, 32)
    engines = {(s.policy, s.name): InferenceEngine(model, policies[s.policy], s.thresholds) for s in settings}
    timings = time_engines(engines, x, torch.arange(len(x)), config)
    seconds = {"streaming": stage_seconds(model, x[:config.streaming_samples], 1, config),
               "compacting": stage_seconds(model, x[:config.compacting_samples], config.batch_size, config)}
    base = next(t for (p, _), t in timings.items() if p == "last-exit")
    out = {}
    for s in settings:
        t, policy = timings[(s.policy, s.name)], policies[s.policy]
        exits = test_eval[s.policy].exits(s.thresholds)  # (N, B)
        row = {"latency_ms_measured": t.streaming_ms, "latency_ms_sem": t.streaming_sem_ms,
               "latency_ms_p10": t.streaming_p10_ms, "latency_ms_p90": t.streaming_p90_ms,
               "compacting_ms_per_sample": t.compacting_ms, "throughput_per_s": t.samples_per_s,
               "time_saved_streaming": 1 - t.streaming_ms / base.streaming_ms,
               "time_saved_compacting": 1 - t.compacting_ms / base.compacting_ms}
        for mode, m in (("streaming", config.streaming_samples), ("compacting", config.compacting_samples)):
            row[f"flops_saved_{mode}"] = flops_saved(flops, exits[:, :m], policy)
            predicted = flops_saved(seconds[mode], exits[:, :m], policy)  # the saving priced in stage seconds
            row[f"stage_time_saved_{mode}"] = predicted
            # target >= 0.9: what the exit machinery leaves of the saving the stages promise
            row[f"time_saved_over_predicted_{mode}"] = row[f"time_saved_{mode}"] / predicted if predicted > 0 else None
        out[(s.policy, s.name)] = row
    return out


def machinery(model, gate: Policy, thresholds: torch.Tensor, split, config: TimingConfig) -> dict:
    """The exit machinery's cost per decision at B = 1 (student 0 under the learned gate) against one
    bare exit-head call at the same exits, on the first test samples; target at most 2x."""
    x, _ = split.batch(torch.arange(min(config.machinery_samples, len(split))))
    step = DeviceStep(model.students[0], 0, gate, thresholds, bias_share(model))
    return exit_machinery(step, x.contiguous(memory_format=torch.channels_last), config)


def goal(entries: list[dict], last_accuracy: float, max_drop: float) -> dict:
    """The local policy saving the most FLOPs on test within max_drop of last-exit (its main setting)."""
    ok = [e for e in entries if e["local"] and e["setting"] == CALIBRATED and e["policy"] != "random"
          and e["accuracy"] >= last_accuracy - max_drop]
    best = max(ok, key=lambda e: e["flops_reduction"], default=None)
    saved = best["flops_reduction"] if best else 0.0
    return {"policy": best and best["policy"], "flops_reduction": saved, "target": 0.3, "met": saved >= 0.3}


@contextmanager
def one_thread():
    """Calibration's many small tensor ops run faster on one thread than through OpenMP's hand-offs,
    above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def calibrate(policies, val_eval, test_eval, config: EvaluateConfig):
    """Every policy's settings chosen on val, and its calibration curve measured on test."""
    settings, curves = [Setting("last-exit", "last exit", policies["last-exit"].default_thresholds())], {}
    last = val_eval["last-exit"](settings[0].thresholds)
    for name in policies:
        if name == "last-exit":
            continue
        front = calibration_front(val_eval[name], config.calibration)
        curves[name] = [curve_point(test_eval[name](o.thresholds)) for o in thin(front, config.curve_points)]
        settings += calibrated_settings(name, front, last, config)
    return settings + extra_settings(val_eval, settings, config), curves


def certified_entry(name: str, policy: Policy, path: torch.Tensor, spec: RiskSpec, val: PathLosses,
                    test_eval: PolicyEvaluator, last_accuracy: float) -> dict:
    """One policy's certificate on val and, where it has one, its certified setting's test numbers."""
    cert = certify(path, val, spec)
    out = {"policy": name, "local": policy.local, "certified": cert.index >= 0, "candidate": cert.index,
           "candidates": cert.candidates, "calibration_samples": cert.n, "losses": cert.losses,
           "p_value": cert.p_value, "next_epsilon": cert.next_epsilon,
           "next_samples": cert.next_samples, "thresholds": None, "test": None}
    if cert.index < 0:
        return out
    on_test = test_eval(cert.thresholds)
    risk = path_losses(test_eval, cert.thresholds[None], spec.risk).loss.double().mean().item()
    out.update(thresholds=jsonable_thresholds(cert.thresholds),
               test={"accuracy": on_test.accuracy, "accuracy_change": on_test.accuracy - last_accuracy, "risk": risk,
                     "flops_reduction": on_test.flops_reduction, "latency_ms_simulated": 1e3 * on_test.latency_s})
    return out


def candidate_paths(train: Evidence, val_eval: dict, config: EvaluateConfig) -> dict[str, torch.Tensor]:
    """Per policy (last-exit aside), the certification candidates (C, 5) ordered on the training evidence."""
    return {name: candidate_path(PolicyEvaluator(val.policy, train, val.flops, val.costs), config.risk_path,
                                 config.risk_candidates) for name, val in val_eval.items() if name != "last-exit"}


def certify_policies(spec: RiskSpec, paths: dict, val_eval: dict, test_eval: dict, config: EvaluateConfig,
                     train: Evidence = None) -> dict:
    """Per policy: its certificate on val, its certified setting's test numbers and (config.resplits > 0)
    the resplit check on val + test pooled; for a local policy under the consistency risk also the
    combinations of per-device settings the adaptive runtime may use (`distree.risk_grid`), its
    path cut and thinned on the training evidence `train`."""
    began = time.perf_counter()
    last = test_eval["last-exit"](test_eval["last-exit"].policy.default_thresholds())
    n = val_eval["last-exit"].evidence.u.shape[2]
    rows, checks = [], {}
    for name, path in paths.items():
        val = val_eval[name]
        on_val = path_losses(val, path, spec.risk)
        rows.append(certified_entry(name, val.policy, path, spec, on_val, test_eval[name], last.accuracy))
        if spec.risk == "consistency" and val.policy.local and train is not None:
            rows[-1]["grid"] = policy_grid(val, train, path, spec.epsilon, spec.delta, config.grid_steps).to_json()
        if config.resplits:
            on_test = path_losses(test_eval[name], path, spec.risk)
            pool = PathLosses(torch.cat([on_val.loss, on_test.loss], 1), torch.cat([on_val.flops, on_test.flops], 1))
            checks[name] = resplit_check(pool, spec, val.flops.last_exit(), config.resplits, config.seed,
                                         list(config.resplit_epsilons))
    return {**asdict(spec), "calibration_samples": n, "smallest_epsilon": upper_bound(0, n, spec.delta),
            "max_losses": max_losses(n, spec.epsilon, spec.delta), "policies": rows, "resplits": checks,
            "elapsed_s": time.perf_counter() - began}


def surviving_report(model, table: SurvivingSets, test, flops: FlopTable, test_eval: dict, policies: dict,
                     settings: list[Setting]) -> list[dict]:
    """Per local policy's main setting (and last-exit): accuracy and FLOPs on test for every surviving
    set, healthy first, with the set's aggregator and with zeros; and the expected accuracy when each
    device is up with probability p."""
    n = len(model.students)
    sets = [tuple(range(n))] + proper_subsets(n)
    rows = []
    for s in settings:
        policy = policies[s.policy]
        if not policy.local or s.policy == "random" or s.name not in (CALIBRATED, "last exit"):
            continue
        outcomes = [set_outcome(model, table, test, flops, policy, s.thresholds, members) for members in sets]
        fitted = {o.members: o.accuracy for o in outcomes}
        zeroed = {o.members: o.accuracy_zeroed for o in outcomes}
        rows.append({"policy": s.policy, "setting": s.name,
                     "sets": [{"members": list(o.members), "accuracy": o.accuracy, "accuracy_zeroed": o.accuracy_zeroed,
                               "flops_reduction": o.flops_reduction} for o in outcomes],
                     "expected": [{"p": p, "accuracy": expected_accuracy(fitted, n, p),
                                   "accuracy_zeroed": expected_accuracy(zeroed, n, p)} for p in AVAILABILITIES]})
    return rows


def set_evaluators(model, table: SurvivingSets, ev, flops: FlopTable, policies: dict, config: EvaluateConfig) -> dict:
    """Per proper subset of the students, each local policy's evaluator (random and last-exit aside) with
    only that set answering: {members: {policy: PolicyEvaluator}}."""
    local = [n for n, p in policies.items() if p.local and n not in ("random", "last-exit")]
    return {members: {n: set_evaluator(model, table, ev, flops, policies[n], members, config.costs) for n in local}
            for members in proper_subsets(len(model.students))}


def certify_sets(spec: RiskSpec, paths: dict, val_sets: dict, test_sets: dict, config: EvaluateConfig,
                 grids: dict[str, GridCertificate] = None) -> list[dict]:
    """Per surviving set, each local policy's path certified on val with that set answering (its own
    exit-7 answer and aggregator), its setting measured on test and, config.resplits > 0, the
    resplit check at spec.epsilon on val + test pooled; where the policy has a grid of combinations
    (`grids`, the consistency risk's), every combination of the members' settings on its path too."""
    out = []
    for members, val_eval in val_sets.items():
        rows = []
        for name, val in val_eval.items():
            test = test_sets[members][name]
            last = test(test.policy.default_thresholds())  # every member at exit 7
            on_val = path_losses(val, paths[name], spec.risk)
            row = certified_entry(name, val.policy, paths[name], spec, on_val, test, last.accuracy)
            if grids and name in grids:
                row["grid"] = certify_grid(val, grids[name].path, spec.epsilon, spec.delta, members).to_json()
            if config.resplits:
                on_test = path_losses(test, paths[name], spec.risk)
                pool = PathLosses(torch.cat([on_val.loss, on_test.loss], 1), torch.cat([on_val.flops, on_test.flops], 1))
                row["resplit"] = resplit_check(pool, spec, val.flops.last_exit(), config.resplits, config.seed)["at_epsilon"]
            rows.append(row)
        out.append({"members": list(members), "policies": rows})
    return out


def evaluate_model(model, splits, config: EvaluateConfig = EvaluateConfig(),
                   surviving: SurvivingSets | None = None) -> Evaluation:
    """Calibrates every policy on splits.val, measures on splits.test; returns the report's contents.
    The surviving-set aggregators are fitted on the training evidence unless given."""
    began = time.perf_counter()
    val = collect_evidence(model, splits.val, config.batch_size)
    test = collect_evidence(model, splits.test, config.batch_size)
    sample, _ = splits.test.batch(torch.arange(1))
    flops = count_flops(model, sample.contiguous(memory_format=torch.channels_last))
    policies, train = build_policies(model, splits.train, config)
    if surviving is None:
        surviving = fit_surviving_sets(model, train.u, train.labels)
    val_eval = {n: PolicyEvaluator(p, val, flops, config.costs) for n, p in policies.items()}
    test_eval = {n: PolicyEvaluator(p, test, flops, config.costs) for n, p in policies.items()}
    with one_thread():
        settings, curves = calibrate(policies, val_eval, test_eval, config)
        entries = [entry(s, val_eval[s.policy](s.thresholds), test_eval[s.policy](s.thresholds), policies[s.policy])
                   for s in settings]
        began_risk = time.perf_counter()
        paths = candidate_paths(train, val_eval, config) if config.risks else {}
        certified = [certify_policies(spec, paths, val_eval, test_eval, config, train) for spec in config.risks]
        if config.risks:  # the same paths, certified anew for every surviving set
            val_sets = set_evaluators(model, surviving, val, flops, policies, config)
            test_sets = set_evaluators(model, surviving, test, flops, policies, config)
            for spec, c in zip(config.risks, certified):
                grids = {e["policy"]: GridCertificate.from_json(e["grid"]) for e in c["policies"] if e.get("grid")}
                c["surviving_sets"] = certify_sets(spec, paths, val_sets, test_sets, config, grids)
        certification_s = time.perf_counter() - began_risk
    exit_cost = None
    if config.measure_time:
        timing = measure(model, policies, timed_settings(settings), splits.test, test_eval, flops, config.timing)
        for e in entries:
            e.update(timing.get((e["policy"], e["setting"]), {}))
        exit_cost = machinery(model, policies["learned-gate"], policies["learned-gate"].default_thresholds(),
                              splits.test, config.timing)
    exit_logits = test.exit_logits()  # (7, B, K)
    exit_accuracy = (exit_logits.argmax(-1) == test.labels).float().mean(1).tolist()
    scores = {n: e.scores for n, e in test_eval.items() if n != "last-exit"}
    report = {
        "exit_accuracy": exit_accuracy,
        "val_exit_accuracy": (val.exit_logits().argmax(-1) == val.labels).float().mean(1).tolist(),
        "last_exit_accuracy": exit_accuracy[-1],
        "num_students": len(model.students),
        "max_drop": config.calibration.max_drop,
        "flops": {"last_exit": flops.last_exit(), "stage": flops.stage.tolist(), "head": flops.head.tolist(),
                  "aggregator": flops.aggregator},
        "costs": asdict(config.costs),
        "timing": asdict(config.timing),
        "policies": entries,
        "curves": curves,
        "score_auroc": {n: score_aurocs(policies[n], s, test) for n, s in scores.items()},
        "oracle": oracle(test, flops),
        "goal": goal(entries, exit_accuracy[-1], config.calibration.max_drop),
        "exit_machinery": exit_cost,
        "certified": certified,
        "certification_s": certification_s,
        "surviving_sets": {"fitted_on_samples": train.u.shape[2],
                           "policies": surviving_report(model, surviving, test, flops, test_eval, policies, settings)},
        "elapsed_s": time.perf_counter() - began,
    }
    last_right = exit_logits[-1].argmax(-1) == test.labels
    return Evaluation(report, scores, last_right, policies["learned-gate"], surviving)


def check_run(model, config: dict, run_dir, dataset: str | None) -> None:
    """The students must be the run's: its dataset's shape and number of students."""
    name = config["data"]["name"]
    if dataset is not None and dataset != name:
        raise DistreeError(f"{run_dir} is a {name} run, not {dataset}")
    n = config["students"]["num_students"]
    if len(model.students) != n:
        raise DistreeError(f"the students in {run_dir} are {len(model.students)}, but its config.json says {n}; "
                           "the checkpoint comes from another run")
    shape = config["data_shape"]  # as read when the teacher trained (a folder's is known only then)
    stem = next(m for m in model.students[0].modules() if isinstance(m, torch.nn.Conv2d))
    if model.bias.shape[0] != shape["num_classes"] or stem.in_channels != shape["in_channels"]:
        raise DistreeError(f"the students in {run_dir} do not fit {name} ({shape}); the checkpoint comes from another run")


def gate_file(run_dir, name: str | None, gate: LearnedGatePolicy, fresh: bool) -> str:
    """Where this evaluation's learned gate is kept, relative to the run: a named evaluation's
    folder; else learned_gate.pt unless that file holds another gate that stored settings use,
    in which case one named after the new gate's contents (so neither is overwritten)."""
    if name is not None:
        return str(evaluation_dir(".", name) / GATE)
    if fresh or not (Path(run_dir) / GATE).exists():
        return GATE
    stored = load_learned_gate(run_dir).state_dict()
    new = gate.state_dict()
    if stored.keys() == new.keys() and all(torch.equal(stored[k], new[k]) for k in new):
        return GATE
    digest = hashlib.sha256(b"".join(new[k].numpy().tobytes() for k in sorted(new))).hexdigest()[:12]
    return f"learned_gate-{digest}.pt"


def evaluate_run(run_dir, config: EvaluateConfig = EvaluateConfig(), dataset: str | None = None,
                 name: str | None = None) -> Evaluation:
    """Evaluates a trained run, keeps the learned gate it fitted and adds its settings to the run's
    (`distree.run_settings`: a name the run holds is never replaced); a named evaluation's report
    belongs in RUN/evaluations/NAME, an unnamed one's in the run."""
    held = read_settings(run_dir)  # a damaged settings file is an error before the work, not after
    if name is not None:
        check_evaluation_name(name)
        if evaluation_dir(run_dir, name).exists() or any(s.evaluation == name for s in held.settings.values()):
            raise DistreeError(f"the run holds an evaluation named {name!r} already; choose another --name")
    for t in config.thresholds.values():
        check_thresholds(t)  # before minutes of work, not after
    run_config = read_config(run_dir)
    model = load_student_model(run_dir)
    check_run(model, run_config, run_dir, dataset)
    splits = run_splits(run_dir, run_config)
    stored_sets = load_surviving_sets(run_dir, len(model.students))
    evaluation = evaluate_model(model, splits, config, stored_sets)
    if stored_sets is None:  # none yet, or fitted for students the run no longer holds
        save_surviving_sets(run_dir, evaluation.surviving)
    evaluation.report = {"dataset": run_config["data"]["name"], "class_names": class_names(run_config),
                         "teacher_accuracy": teacher_accuracy(run_dir), **evaluation.report}
    fresh = not held.holds_for(students_sha256(run_dir))
    gate = gate_file(run_dir, name, evaluation.gate, fresh)
    settings = [replace(s, name=setting_name(name, s.name), gate=gate)
                for s in settings_from_report(evaluation.report).values()]
    adds = any(s.name not in held.settings for s in settings)
    if fresh or (adds and not (Path(run_dir) / gate).exists()):  # the gate that settings about to be stored use
        save_learned_gate(evaluation.gate, Path(run_dir) / gate, run_config)
    evaluation.stored = store_settings(run_dir, settings)
    evaluation.out = evaluation_dir(run_dir, name)
    evaluation.out.mkdir(parents=True, exist_ok=True)
    return evaluation
