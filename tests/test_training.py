"""Training: schedules, checkpoints, the three commands on a tiny synthetic run, bad input, and
an exact resume after SIGKILL of a real training process."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distree.cli import main
from distree.errors import DistreeError
from distree.losses import LossConfig
from distree.models.distree_model import DistrEEModel
from distree.training import loop
from distree.run_dir import load_checkpoint, load_student_model, save_atomic
from distree.training.loop import OptimConfig, lr_factor
from distree.training.shards import Share
from distree.training.students import dropped
from distree.training.overhead import exit_params_and_flops, exit_step_time

REPO = Path(__file__).resolve().parents[1]


def test_step_schedule():
    cfg = OptimConfig(epochs=10, lr=0.1, milestones=[2, 4], gamma=0.2)
    assert [lr_factor(cfg, s, 10) for s in (0, 19, 20, 39, 40)] == pytest.approx([1, 1, 0.2, 0.2, 0.04])


def test_cosine_schedule_with_warmup():
    cfg = OptimConfig(epochs=3, schedule="cosine", warmup_epochs=1)
    assert lr_factor(cfg, 0, 10) == pytest.approx(0.1) and lr_factor(cfg, 9, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 10) == pytest.approx(1.0) and lr_factor(cfg, 20, 10) == pytest.approx(0.5)


def test_checkpoints_are_atomic_and_checked(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"epoch": 3, "w": torch.ones(2)}, path)
    assert load_checkpoint(path)["epoch"] == 3 and not (tmp_path / "c.pt.tmp").exists()
    path.write_bytes(b"\x80garbage")
    with pytest.raises(DistreeError, match="corrupt checkpoint"):
        load_checkpoint(path)
    with pytest.raises(DistreeError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt")


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory) -> Path:
    """A smoke run with a trained teacher and a 2-student partition."""
    run = tmp_path_factory.mktemp("runs") / "partitioned"
    assert cli("train-teacher", "--out", run, "--preset", "smoke") == 0
    assert cli("partition", "--run", run) == 0
    return run


@pytest.fixture(scope="module")
def trained(partitioned, tmp_path_factory) -> Path:
    """The same run with its students trained, uninterrupted."""
    run = copy_run(partitioned, tmp_path_factory.mktemp("runs") / "trained")
    assert cli("train-students", "--run", run) == 0
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_pipeline(trained, capsys):
    config = json.loads((trained / "config.json").read_text())
    assert config["preset"] == "smoke" and config["data"]["name"] == "synthetic"
    assert config["preprocessing"]["resize"] == "crop-resize" and len(config["preprocessing"]["mean"]) == 3  # recorded
    partition = json.loads((trained / "partition.json").read_text())
    assert partition["num_students"] == 2 and sum(partition["sizes"]) == 64
    assert load_checkpoint(trained / "teacher.pt")["history"][-1]["test_acc"] > 0.5
    model = load_student_model(trained)
    assert isinstance(model, DistrEEModel) and not model.training and len(model.students) == 2
    rows = (trained / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("phase,epoch") and sum(r.startswith("teacher,") for r in rows) == 3
    assert sum(r.startswith("students,") for r in rows) == 2 and "test_acc_exit7" in rows[0]
    assert load_checkpoint(trained / "students.pt")["history"][-1]["test_acc_exit7"] > 0.5  # chance is 0.1
    assert cli("train-students", "--run", trained, "--resume") == 0  # already done: nothing to do
    assert "test accuracy at exits 1..7" in capsys.readouterr().out


def same_training(a: Path, b: Path, name: str) -> None:
    """Two runs ended with equal weights and equal accuracies in every epoch."""
    ckpt_a, ckpt_b = load_checkpoint(a / name), load_checkpoint(b / name)
    assert ckpt_a["epoch"] == ckpt_b["epoch"]
    for key in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][key], ckpt_b["model"][key]), key
    accuracy = lambda ckpt: [{k: v for k, v in row.items() if "acc" in k} for row in ckpt["history"]]  # noqa: E731
    assert accuracy(ckpt_a) == accuracy(ckpt_b)


def test_students_resume_exactly(partitioned, trained, tmp_path, monkeypatch):
    """Stop the students after their first checkpoint; --resume ends where the uninterrupted run ended."""
    run = copy_run(partitioned, tmp_path / "run")
    save = loop.save_atomic

    class Interrupted(Exception):
        pass

    def save_then_stop(obj, path):
        save(obj, path)
        raise Interrupted

    monkeypatch.setattr(loop, "save_atomic", save_then_stop)
    with pytest.raises(Interrupted):
        cli("train-students", "--run", run)
    monkeypatch.undo()
    assert load_checkpoint(run / "students.pt")["epoch"] == 1
    assert cli("train-students", "--run", run, "--epochs", 3, "--resume") == 2  # options with --resume
    assert cli("train-students", "--run", run, "--resume") == 0
    same_training(run, trained, "students.pt")


def train_teacher_process(run: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distree.cli", "train-teacher", "--out", str(run), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_then_resume_gives_the_same_result(tmp_path):
    """Kill a real training process after its first checkpoint; --resume must end where an uninterrupted run ends."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert train_teacher_process(whole, "--preset", "smoke").wait(timeout=300) == 0
    proc = train_teacher_process(killed, "--preset", "smoke")
    deadline = time.monotonic() + 300
    while not (killed / "teacher.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= load_checkpoint(killed / "teacher.pt")["epoch"] < 3, "the kill came too late to test a resume"
    assert train_teacher_process(killed, "--resume").wait(timeout=300) == 0
    same_training(whole, killed, "teacher.pt")


def error_of(capsys, *args) -> str:
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_input_is_one_line_and_exit_2(partitioned, tmp_path, capsys):
    run = copy_run(partitioned, tmp_path / "run")
    assert "does not match" in error_of(capsys, "train-students", "--run", run, "--students", 3)
    assert "already holds a run" in error_of(capsys, "train-teacher", "--out", run, "--preset", "smoke")
    assert "not a run directory" in error_of(capsys, "partition", "--run", tmp_path / "nothing")
    assert "apt-get install dataset-fashion-mnist" in error_of(
        capsys, "train-teacher", "--out", tmp_path / "f", "--data-dir", tmp_path / "nowhere")
    assert "between 1 and 8" in error_of(capsys, "partition", "--run", run, "--students", 9)
    assert "--failout must be a probability in [0, 1], got 1.5" in error_of(capsys, "train-students", "--run", run,
                                                                          "--failout", 1.5)
    assert "--dropout must be a probability" in error_of(capsys, "train-students", "--run", run, "--dropout", -0.1)

    body = json.loads((run / "partition.json").read_text())
    body.update(num_filters=65, groups=body["groups"][:1] + [body["groups"][1] + [64]])
    (run / "partition.json").write_text(json.dumps(body))
    assert "final group has 64" in error_of(capsys, "train-students", "--run", run)

    (run / "teacher.pt").write_bytes(b"truncated")
    assert "corrupt checkpoint" in error_of(capsys, "partition", "--run", run)
    (run / "teacher.pt").unlink()
    assert "no teacher" in error_of(capsys, "partition", "--run", run)


def test_failout_draws_are_the_global_batchs_on_every_rank():
    # a rank's rows of the global batch lose the students they lose in one process, draw for draw
    u = torch.randn(3, 7, 10, 4)
    cfg = LossConfig(dropout=0.2, failout=0.4)
    whole = dropped(u, cfg, torch.Generator().manual_seed(5), Share(slice(0, 10), 1.0, 1.0), 10)
    parts = [dropped(u[:, :, rows], cfg, torch.Generator().manual_seed(5), Share(rows, 0.5, 1.0), 10)
             for rows in (slice(0, 5), slice(5, 10))]
    assert torch.equal(torch.cat(parts, 2), whole)
    assert (whole[:, 0, :, 0] == 0).any() and (whole[:, 0].abs().sum((0, 2)) > 0).all()  # some lost, never all


def test_exit_overhead():
    cost = exit_params_and_flops()
    assert cost["exit_params"] == 10 * (16 + 16 + 16 + 32 + 32 + 64)
    assert cost["exit_flops"] == 2 * cost["exit_params"]  # one multiply-add per weight, batch 1
    assert 0 < cost["exit_flops_percent"] < cost["exit_params_percent"] < 2
    times = exit_step_time(batch_size=8, repeats=1)
    assert set(times) == {"auto", "reference"} and all(t["all_exits_s"] > 0 for t in times.values())
