"""The runtime against its transport floor, in one run:

    .venv/bin/python benches/runtime_floor.py --run runs/demo --out /tmp/floor [--samples 600] [--one-student]

1. The gloo round trip between two local processes (one torch thread each), for the runtime's
   message sizes: rank 0 sends an INPUT-sized message, rank 1 answers with a FEATURE-sized one,
   blocking `dist.send`/`dist.recv`, as bare as gloo gets. With N > 1 students, also the bare
   round of N + 1 processes, the session's own shape: rank 0 sends the INPUT to every other
   rank at once and then takes each one's FEATURE, the transport a round cannot go below.
2. A `distree deploy` session of the run (`--window 1`, every rank marking its messages with
   `--trace`), whose rounds are broken down by `distree.runtime.trace.breakdown`.
3. Both again, so load that changed during the session shows as a spread.

`--one-student` serves, instead of the run, one untrained student of the run's architecture on
its data (written to OUT/run): N = 1, one device and the aggregator, two processes as the round
trip has. What it computes does not matter to the floor. `--cpus` pins the session's ranks (and
rank r of the round trip to the CPU of the session's rank r).

Printed: per policy, latency median and p95 / median, and the median of latency minus the
device's compute as a multiple of the round trip and of the bare round; then each segment's
median (the device the round waited for). Everything goes to OUT/floor.json; the session's
report to OUT/session.json. The round trip and the bare round are `transport_threads.exchange`,
both sides bare.
"""
import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from distree.runtime import messages as m
from distree.runtime.config import ServeConfig
from distree.runtime.deploy import deploy
from distree.runtime.pinning import parse_cpus
from distree.runtime.trace import SEGMENTS, breakdown, read_marks
from distree.run_dir import build_students, read_config, save_atomic, write_config
from transport_threads import exchange  # benches/, beside this script


def one_student_run(run: str, out: Path) -> str:
    """A run with one untrained student of run's architecture, on its data, in out."""
    config = read_config(run)
    config["students"]["num_students"] = 1
    torch.manual_seed(0)
    out.mkdir(parents=True)
    write_config(out, config)
    save_atomic({"config": config, "model": build_students(config).state_dict()}, out / "students.pt")
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--out", required=True, help="a new folder for the session's report, marks and figures")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--policies", default="last-exit,distree,local-confidence,learned-gate,confidence")
    parser.add_argument("--one-student", action="store_true", help="N = 1: one untrained student")
    parser.add_argument("--cpus", default=None, help="the session's --cpus (default: no pinning)")
    parser.add_argument("--threads", type=int, default=ServeConfig.threads, help="the session's torch threads per rank")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    run = one_student_run(args.run, out / "run") if args.one_student else args.run
    run_config = read_config(run)
    shape = run_config["data_shape"]
    input_numel = shape["in_channels"] * shape.get("image_size", 32) ** 2
    feature = m.message_size(run_config["data_shape"]["num_classes"])
    down = m.message_size(input_numel)
    devices = run_config["students"]["num_students"]
    cpus = None if args.cpus is None else parse_cpus(args.cpus, devices + 1)
    before = transport(down, feature, out, cpus, devices)
    config = ServeConfig(run=run, samples=args.samples, window=1, policies=args.policies.split(","),
                         report=str(out / "session.json"), trace=str(out / "trace"),
                         cpus=args.cpus, threads=args.threads)
    codes = deploy(config, devices).codes
    if any(codes):
        raise SystemExit(f"the session failed: exit codes {codes}")
    after = transport(down, feature, out, cpus, devices)
    rtt = statistics.mean([before["rtt"]["median_ms"], after["rtt"]["median_ms"]])
    bare = statistics.mean([before["round"]["median_ms"], after["round"]["median_ms"]])
    report, parts = json.loads((out / "session.json").read_text()), breakdown(read_marks(config.trace))
    rows = {}
    lines = [("gloo round trip", "rtt")]
    if devices > 1:
        lines.append((f"bare round of {devices + 1} processes", "round"))
    for name, key in lines:
        print(f"{name}, {down * 4} B there and {feature * 4} B back: median {before[key]['median_ms']:.3f} ms "
              f"before the session, {after[key]['median_ms']:.3f} ms after (p95 {before[key]['p95_ms']:.3f} / "
              f"{after[key]['p95_ms']:.3f})")
    print(f"N = {devices}, {args.samples} samples, window 1, cpus {args.cpus or 'not pinned'}, "
          f"{args.threads} torch thread(s) per rank")
    print(f"{'policy':18} {'median ms':>9} {'p95/med':>7} {'minus compute ms':>16} {'x RTT':>6} {'x bare':>6}  "
          + " ".join(f"{s:>13}" for s in SEGMENTS))
    for p, name in enumerate(config.policies):
        lat = report["policies"][name]["latency_ms_measured"]
        b = parts[p]
        floor = float(np.median(b["total"] - b["compute"])) * 1e3
        rows[name] = {"latency_median_ms": lat["median"], "p95_over_median": lat["p95"] / lat["median"],
                      "traced_samples": b["samples"], "minus_compute_median_ms": floor, "x_rtt": floor / rtt,
                      "x_bare_round": floor / bare,
                      "segments_median_ms": {s: float(np.median(b[s])) * 1e3 for s in SEGMENTS},
                      "segments_mean_ms": {s: float(np.mean(b[s])) * 1e3 for s in SEGMENTS}}
        print(f"{name:18} {lat['median']:9.2f} {lat['p95'] / lat['median']:7.2f} {floor:16.3f} {floor / rtt:6.1f} "
              f"{floor / bare:6.1f}  " + " ".join(f"{rows[name]['segments_median_ms'][s]:13.3f}" for s in SEGMENTS))
    (out / "floor.json").write_text(json.dumps({"before": before, "after": after, "policies": rows},
                                               indent=1) + "\n")


def transport(down: int, up: int, out: Path, cpus: list | None, devices: int) -> dict:
    """The bare round trip between two processes ("rtt") and the bare round of the session's devices + 1
    processes ("round"; the round trip again at N = 1)."""
    rtt = exchange((down, up), 1, out / "rtt.json", cpus=cpus)
    return {"rtt": rtt, "round": exchange((down, up), devices, out / "rtt.json", cpus=cpus) if devices > 1 else rtt}

if __name__ == "__main__":
    main()
