"""The adaptive runtime's targets on a trained run (issue 13), in one script:

    .venv/bin/python benches/adaptive_demo.py --run runs/demo --out /tmp/adaptive [--samples 900]

N = 2 local processes on loopback, DistrEE only, one sample in flight, three sessions in a row:
(a) static thresholds (the run's calibrated ones), no fault: its median latency sets the target,
    p95 <= 1.3 x that median;
(b) the same static thresholds with device 1 slowed 3x from the middle third's first sample for
    as long as a third of the samples takes at the target pace (`slow:1@S/3:3:SECONDS`);
(c) the same fault under the target, moving each device along the run's certified consistency
    path (conservative first) with shadow samples checking the answers against exit 7.
The true disagreement of (c) with exit 7 is measured afterwards on every sample, in one
process, and set against the shadow estimate and its bound. Nothing is written into the run:
the certified path goes to OUT/path.json (rebuilt as `distree evaluate` builds it, on training
evidence, where the run's report.json predates stored paths, and checked against the certified
setting), the reports to OUT/{static,static_slow,adaptive}.json, the figures to OUT/summary.json.
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
from distree.policies import make_policy
from distree.risk import RiskSpec, candidate_path, certify, path_losses
from distree.runtime.config import ServeConfig
from distree.runtime.deploy import deploy
from distree.runtime.inputs import load_samples
from distree.run_dir import REPORT, jsonable_thresholds, load_student_model, read_config, run_splits

POLICY = "distree"


def certified_path(run: str, epsilon: float | None) -> tuple[list, float]:
    """The run's certified consistency path for POLICY (candidates 0..k, conservative first) as JSON
    thresholds, and its epsilon; with `epsilon`, certified again on val at that epsilon."""
    spec = next(c for c in json.loads((Path(run) / REPORT).read_text())["certified"] if c["risk"] == "consistency")
    entry = next(e for e in spec["policies"] if e["policy"] == POLICY)
    if entry.get("path") and epsilon is None:
        return entry["path"], spec["epsilon"]
    config, model = EvaluateConfig(), load_student_model(run)
    splits = run_splits(run, read_config(run))
    train = collect_evidence(model, splits.train, config.batch_size, config.gate_samples)
    sample, _ = splits.test.batch(torch.arange(1))
    flops = count_flops(model, sample.contiguous(memory_format=torch.channels_last))
    path = candidate_path(PolicyEvaluator(make_policy(POLICY), train, flops, config.costs), config.risk_path,
                          config.risk_candidates)  # (C, 5)
    if epsilon is not None:
        val = PolicyEvaluator(make_policy(POLICY), collect_evidence(model, splits.val, config.batch_size), flops,
                              config.costs)
        index = certify(path, path_losses(val, path, "consistency"), RiskSpec("consistency", epsilon, spec["delta"])).index
        return [jsonable_thresholds(t) for t in path[:index + 1]], epsilon
    path = path[:entry["candidate"] + 1]  # (k + 1, 5)
    certified = torch.tensor([float(v) for v in entry["thresholds"]])
    if len(path) != entry["candidate"] + 1 or not torch.allclose(path[-1], certified):
        raise SystemExit(f"the path rebuilt here ends at {path[-1].tolist()}, not at the certified "
                         f"{certified.tolist()}: the run's evaluation used other settings")
    return [jsonable_thresholds(t) for t in path], spec["epsilon"]


def session(out: Path, name: str, **options) -> dict:
    config = ServeConfig(policies=[POLICY], reference_samples=0, window=1, report=str(out / f"{name}.json"), **options)
    outcome = deploy(config, 2, timeout_s=1800)
    if outcome.codes[0] != 0:
        raise SystemExit(f"session {name} failed: exit codes {outcome.codes}")
    return json.loads((out / f"{name}.json").read_text())["policies"][POLICY]


def full_depth_predictions(run: str, samples: int) -> list[int]:
    """Exit 7's answers (every student at its last exit) on the session's samples, in one process."""
    model, last = load_student_model(run), make_policy("last-exit")
    x, _ = load_samples(run, "test", samples)
    result = InferenceEngine(model, last, last.default_thresholds()).run(x, torch.arange(len(x)), mode="compacting")
    return result.logits.argmax(-1).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True, help="a new or empty directory for the reports")
    p.add_argument("--samples", type=int, default=900)
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--target-x", type=float, default=1.3, help="target p95 = this x the static median")
    p.add_argument("--epsilon", type=float, help="certify the consistency path again on val at this epsilon "
                                                 "(default: the run's certificate)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.json")):
        raise SystemExit(f"{out} holds reports already; give a new directory")
    path_file = out / "path.json"
    path, epsilon = certified_path(args.run, args.epsilon)
    if not path:
        raise SystemExit(f"nothing on the path of {POLICY} is certified at epsilon {epsilon:g}")
    path_file.write_text(json.dumps({POLICY: path}))
    common = {"run": args.run, "samples": args.samples}
    static = session(out, "static", **common)
    median = static["latency_ms_measured"]["median"]
    target = args.target_x * median
    third = args.samples // 3
    fault = f"slow:1@{third}:{args.factor:g}:{third * target / 1e3:.3f}"
    slow = session(out, "static_slow", faults=[fault], **common)
    adaptive = session(out, "adaptive", faults=[fault], latency_target_ms=target, threshold_path=str(path_file),
                       consistency_epsilon=epsilon, **common)
    full = full_depth_predictions(args.run, args.samples)
    disagree = sum(a != f for a, f in zip(adaptive["predictions"], full)) / len(full)
    static_disagree = sum(a != f for a, f in zip(static["predictions"], full)) / len(full)
    key = f"slow:1@{third}"
    summary = {
        "load_average": os.getloadavg(), "samples": args.samples, "fault": fault, "target_ms": target,
        "epsilon": epsilon, "path": path,
        "static": {"median_ms": median, "p95_ms": static["latency_ms_measured"]["p95"],
                   "accuracy": static["accuracy"], "disagreement_with_exit7": static_disagree},
        "static_slow": {"window": [slow["phases"][key]["start"], slow["phases"][key]["end"]],
                        "p95_during_ms": slow["phases"][key]["during"]["latency_ms"]["p95"],
                        "p95_during_over_target": slow["phases"][key]["during"]["latency_ms"]["p95"] / target,
                        "accuracy": slow["accuracy"]},
        "adaptive": {"window": [adaptive["phases"][key]["start"], adaptive["phases"][key]["end"]],
                     "p95_during_ms": adaptive["phases"][key]["during"]["latency_ms"]["p95"],
                     "p95_during_over_target": adaptive["phases"][key]["during"]["latency_ms"]["p95"] / target,
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
    summary["adaptive"]["true_within_shadow_bound"] = s["upper_bound"] is not None and disagree <= s["upper_bound"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
