"""One epoch of a preset's teacher and students under two launches, and their ratio.

    python benches/epoch_time.py ranks            # demo preset, CPU: 1 process x 2 threads against
                                                  # torchrun 2 ranks x 1 thread (gloo)
    python benches/epoch_time.py amp              # paper preset, one GPU: --amp off against --amp bf16
    (--preset NAME times another preset)

Each launch trains a fresh run for one epoch with the real commands (train-teacher, partition
in one process, train-students) and the time is what the run itself records in metrics.csv:
the epoch's training and its evaluation on val, without start-up and data loading. Run it on a
quiet machine. The paper preset reads CIFAR-10 from --data-dir (default: distree's usual
place); where there is none it trains on random images of CIFAR-10's size, which take the same
time. Runs are written under --out (default: a temporary folder) and kept there.
"""
import argparse
import csv
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from distree.data import CIFAR10_DIR  # noqa: E402


@dataclass
class Launch:
    name: str
    prefix: list[str]  # how the distree CLI is started
    threads: str | None  # OMP_NUM_THREADS of each process (None: as it is)
    device: str
    amp: str


def cli(*torchrun: str) -> list[str]:
    if not torchrun:
        return [sys.executable, "-m", "distree"]
    return [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", "distree", "--"]


def comparisons(kind: str) -> tuple[str, list[Launch]]:
    """The preset and the two launches to compare."""
    if kind == "ranks":
        return "demo", [Launch("1 process x 2 threads", cli(), "2", "cpu", "off"),
                        Launch("2 ranks x 1 thread", cli("--standalone", "--nproc-per-node", "2"), "1", "cpu", "off")]
    return "paper", [Launch("--amp off", cli(), None, "cuda", "off"), Launch("--amp bf16", cli(), None, "cuda", "bf16")]


def random_cifar10(folder: Path) -> Path:
    """A cifar-10-batches-py folder of random images and labels, CIFAR-10's sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, 10000).tolist()}, f)
    return folder


def epoch_seconds(run: Path, phase: str) -> float:
    with open(run / "metrics.csv", newline="") as f:
        return float(next(r for r in csv.DictReader(f) if r["phase"] == phase)["seconds"])


def train(run: Path, preset: str, data: list[str], launch: Launch) -> dict:
    """Trains the run for one epoch in this launch; the seconds of each phase's epoch."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    timed = env if launch.threads is None else {**env, "OMP_NUM_THREADS": launch.threads}
    options = ["--epochs", "1", "--device", launch.device, "--amp", launch.amp]
    steps = [([*launch.prefix, "train-teacher", "--out", str(run), "--preset", preset, *data, *options], timed),
             ([*cli(), "partition", "--run", str(run), "--device", launch.device], env),  # one process, untimed
             ([*launch.prefix, "train-students", "--run", str(run), *options], timed)]
    for command, step_env in steps:
        subprocess.run(command, cwd=REPO, env=step_env, check=True, stdout=subprocess.DEVNULL)
    return {phase: epoch_seconds(run, phase) for phase in ("teacher", "students")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("ranks", "amp"), help="what to compare: %(choices)s")
    parser.add_argument("--preset", help="the preset to time (default: demo for ranks, paper for amp)")
    parser.add_argument("--out", help="folder for the runs (default: a new temporary folder)")
    parser.add_argument("--data-dir", help="CIFAR-10 for the paper preset (default: distree's usual place, "
                                           "else random images)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="epoch_time_"))
    preset, launches = comparisons(args.kind)
    preset = args.preset or preset
    data = []
    if preset == "paper":
        found = Path(args.data_dir or CIFAR10_DIR)
        data = ["--data-dir", str(found if found.is_dir() else random_cifar10(out / "cifar-10-batches-py"))]
        print(f"data: {data[1]}{'' if found.is_dir() else ' (random images of CIFAR-10 size)'}")
    times = [train(out / f"run{i}", preset, data, launch) for i, launch in enumerate(launches)]
    print(f"one epoch of the {preset} preset (seconds, training and val; runs in {out}):")
    for phase in ("teacher", "students"):
        a, b = (t[phase] for t in times)
        print(f"  {phase:8s}  {launches[0].name}: {a:8.2f}   {launches[1].name}: {b:8.2f}   ratio {b / a:.3f}")


if __name__ == "__main__":
    main()
