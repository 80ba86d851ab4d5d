"""The adaptive runtime's targets on a trained run (issue 13), in one script:

    .venv/bin/python benches/adaptive_demo.py --run runs/demo --out /tmp/adaptive [--samples 900]
        [--device-backend onnxruntime --artifacts runs/demo/export-onnx]

N = 2 local processes on loopback, one policy (`--policy`, DistrEE by default), one sample in
flight, three sessions in a row:
(a) static thresholds, no fault: its median (or p95, `--target-of`) latency sets the target,
    p95 <= 1.3 x that; the thresholds are the run's certified-consistency setting, the one the
    adaptive session starts from (the calibrated ones are cheaper but certify nothing, and the
    adaptive runtime moves only among certified combinations);
(b) the same static thresholds with device 1 slowed 3x for the middle third of the samples
    (`slow:1@S/3:3 slow:1@2S/3:1`: the second fault ends the first);
(c) the same fault under the target, each device moving along the run's certified grid (every
    combination of per-device settings tested at once on val), shadow samples checking the
    answers against exit 7.
The true disagreement of (c) with exit 7 is measured afterwards on every sample, in one
process, and set against the shadow estimate's interval. Nothing is written into the run: the
grid goes to OUT/path.json (built again as `distree evaluate` builds it where `--epsilon` is
given or the run's report.json predates stored grids), the reports to
OUT/{static,static_slow,adaptive}.json, the figures to OUT/summary.json.
"""
import argparse
import json
import os
from pathlib import Path

import torch

from distree.costs import count_flops
from distree.evaluation import EvaluateConfig
from distree.inference.engine import InferenceEngine
from distree.inference.evidence import collect_evidence
from distree.inference.outcome import PolicyEvaluator
from distree.plan import load_policy
from distree.policies import make_policy
from distree.risk import candidate_path, upper_bound
from distree.risk_grid import GridCertificate, policy_grid
from distree.report import write_session_figures
from distree.runtime.config import ServeConfig
from distree.runtime.deploy import deploy
from distree.samples import load_samples
from distree.run_dir import load_student_model, read_config, run_splits
from distree.run_settings import CERTIFIED, read_settings

POLICY = "distree"  # the default --policy


def certified_grid(run: str, policy: str, epsilon: float | None) -> dict:
    """The run's certified grid for policy (its certified-consistency setting's, as JSON); with
    `epsilon`, or where the run's evaluation predates stored grids, built again as `distree
    evaluate` builds it: the candidate order on training evidence (checked against the run's
    certified setting), then every combination tested on val."""
    setting = read_settings(run).get(f"{CERTIFIED}consistency")
    if policy in setting.grids and epsilon is None:
        return setting.grids[policy].to_json()
    config, model = EvaluateConfig(), load_student_model(run)
    splits = run_splits(run, read_config(run))
    train = collect_evidence(model, splits.train, config.batch_size, config.gate_samples)
    sample, _ = splits.test.batch(torch.arange(1))
    flops = count_flops(model, sample.contiguous(memory_format=torch.channels_last))
    ordering = PolicyEvaluator(load_policy(policy, run), train, flops, config.costs)
    candidates = candidate_path(ordering, config.risk_path, config.risk_candidates)  # (C, 5)
    certified = setting.thresholds.get(policy)
    if certified is not None and not (candidates == certified).all(1).any():
        raise SystemExit(f"the certified {certified.tolist()} is not among the candidates rebuilt here: the run's "
                         "evaluation used other settings")
    val = PolicyEvaluator(load_policy(policy, run), collect_evidence(model, splits.val, config.batch_size), flops,
                          config.costs)
    epsilon = setting.options["epsilon"] if epsilon is None else epsilon
    return policy_grid(val, train, candidates, epsilon, setting.options["delta"], config.grid_steps).to_json()


def cheapest_cost(grid: GridCertificate, percentile: float) -> float:
    """The cheapest setting device 1 may run beside device 0 at the path's first, priced at the held
    percentile, over the first's cost: the most the controller can take off that device's compute
    (a slowdown of F is held within x of the static latency only if F times this is about x or less)."""
    cost = grid.costs.at(percentile)[:, 1]  # (C,)
    return min(float(cost[j] / cost[0]) for j in range(len(cost)) if grid.allows((0, j)))


def session(out: Path, name: str, policy: str, **options) -> dict:
    config = ServeConfig(policies=[policy], reference_samples=0, window=1, report=str(out / f"{name}.json"), **options)
    outcome = deploy(config, 2, timeout_s=1800)
    if outcome.codes[0] != 0:
        raise SystemExit(f"session {name} failed: exit codes {outcome.codes}")
    write_session_figures(out / f"{name}.json")  # adaptive_timeline.png beside it, as `distree deploy` draws it
    return json.loads((out / f"{name}.json").read_text())["policies"][policy]


def full_depth_predictions(run: str, samples: int) -> list[int]:
    """Exit 7's answers (every student at its last exit) on the session's samples, in one process."""
    model, last = load_student_model(run), make_policy("last-exit")
    x = load_samples(run, "test", samples).x
    result = InferenceEngine(model, last, last.default_thresholds()).run(x, torch.arange(len(x)), mode="compacting")
    return result.logits.argmax(-1).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True, help="a new or empty directory for the reports")
    p.add_argument("--samples", type=int, default=900)
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--target-x", type=float, default=1.3, help="target p95 = this x the static median (or p95)")
    p.add_argument("--target-of", choices=("median", "p95"), default="median",
                   help="which latency of the static run the target multiplies")
    p.add_argument("--epsilon", type=float, help="certify the grid again on val at this epsilon "
                                                 "(default: the run's certificate)")
    p.add_argument("--percentile", choices=("median", "p95"), default="p95",
                   help="the latency percentile the controller holds under the target, and the one judged "
                        "(default: %(default)s)")
    p.add_argument("--device-backend", default="torch", choices=("torch", "onnxruntime"),
                   help="what the devices compute with in all three sessions (default: %(default)s)")
    p.add_argument("--policy", default=POLICY, help="a local policy the run's certified-consistency setting holds a "
                                                    "grid for (default: %(default)s)")
    p.add_argument("--artifacts", help="with onnxruntime: `distree export --format onnx --policy POLICY`'s folder")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.json")):
        raise SystemExit(f"{out} holds reports already; give a new directory")
    path_file = out / "path.json"
    grid = certified_grid(args.run, args.policy, args.epsilon)
    epsilon = grid["epsilon"]
    path_file.write_text(json.dumps({args.policy: grid}))
    common = {"run": args.run, "policy": args.policy, "samples": args.samples, "setting": f"{CERTIFIED}consistency", "device_backend": args.device_backend,
              "artifacts": args.artifacts}
    static = session(out, "static", **common)
    median = static["latency_ms_measured"]["median"]
    target = args.target_x * static["latency_ms_measured"][args.target_of]
    third = args.samples // 3
    faults = [f"slow:1@{third}:{args.factor:g}", f"slow:1@{2 * third}:1"]  # the middle third of the inputs
    held = 50.0 if args.percentile == "median" else 95.0
    slow = session(out, "static_slow", faults=faults, **common)
    adaptive = session(out, "adaptive", faults=faults, latency_target_ms=target, threshold_path=str(path_file),
                       percentile=held, **common)
    full = full_depth_predictions(args.run, args.samples)
    disagree = sum(a != f for a, f in zip(adaptive["predictions"], full)) / len(full)
    static_disagree = sum(a != f for a, f in zip(static["predictions"], full)) / len(full)
    key = f"slow:1@{third}"
    summary = {
        "load_average": os.getloadavg(), "policy": args.policy, "samples": args.samples,
        "device_backend": args.device_backend, "faults": faults, "target_ms": target,
        "target": f"{args.percentile} <= {args.target_x:g} x static {args.target_of}",
        "epsilon": epsilon, "path": grid["path"], "certified_combinations": sum(grid["certified"]),
        "combinations": len(grid["certified"]),
        "slowed_device_cheapest_cost": cheapest_cost(GridCertificate.from_json(grid), held),
        "static": {"median_ms": median, "p95_ms": static["latency_ms_measured"]["p95"],
                   "accuracy": static["accuracy"], "disagreement_with_exit7": static_disagree},
        "static_slow": {"window": [slow["phases"][key]["start"], slow["phases"][key]["end"]],
                        "held_during_ms": slow["phases"][key]["during"]["latency_ms"][args.percentile],
                        "held_during_over_target": slow["phases"][key]["during"]["latency_ms"][args.percentile] / target,
                        "accuracy": slow["accuracy"]},
        "adaptive": {"window": [adaptive["phases"][key]["start"], adaptive["phases"][key]["end"]],
                     "held_during_ms": adaptive["phases"][key]["during"]["latency_ms"][args.percentile],
                     "held_during_over_target": adaptive["phases"][key]["during"]["latency_ms"][args.percentile] / target,
                     "p95_ms": adaptive["latency_ms_measured"]["p95"], "accuracy": adaptive["accuracy"],
                     "accuracy_minus_static_points": 100 * (adaptive["accuracy"] - static["accuracy"]),
                     "setting_changes": adaptive["adaptive"]["threshold_messages"],
                     "path_settings": len(adaptive["adaptive"]["path"]),
                     "mean_setting": {ph: adaptive["phases"][key][ph]["mean_setting"]
                                      for ph in ("before", "during", "after") if ph in adaptive["phases"][key]},
                     "shadow": adaptive["adaptive"]["shadow"], "shadow_guard": adaptive["adaptive"]["shadow_guard"],
                     "true_disagreement_with_exit7": disagree},
    }
    s = summary["adaptive"]["shadow"]
    if s["shadows"]:  # the two-sided Clopper-Pearson interval at 1 - delta around the shadows' estimate
        low = 1 - upper_bound(s["shadows"] - s["disagreements"], s["shadows"], s["delta"])
        summary["adaptive"]["shadow_interval"] = [low, s["upper_bound"]]
        summary["adaptive"]["true_within_shadow_interval"] = low <= disagree <= s["upper_bound"]
    bounds = [r["bound"] for r in s["per_setting"] if any(r["setting"])]
    summary["adaptive"]["largest_pooled_bound"] = max(bounds) if bounds else None
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
