"""Training on several ranks: the sharded order, the global batch's gradient under DDP, mixed
precision through the fused exit head, bad input, and real 2-rank gloo runs of the smoke preset
(against one process, resumed after SIGKILL of a rank, their checkpoints loaded in one process).

Processes run with OMP_NUM_THREADS=1 on loopback; each wait is on a process's exit, with a
generous outer bound.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distree.cli import main
from distree.data import batches
from distree.errors import DistreeError
from distree.run_dir import load_checkpoint, load_student_model, load_teacher, run_splits
from distree.training.loop import split_accuracy
from distree.training.precision import exit_head_autocast
from distree.training.ranks import Ranks, data_parallel, gather_rows
from distree.training.shards import check_batch_size, eval_rows, share
from distree.training.students import exit_accuracies
from distree_kernels import ExitHead

REPO = Path(__file__).resolve().parents[1]
WAIT = 600  # seconds: an outer bound on any one process, far above what a smoke run takes


def can_spawn() -> str | None:
    """Why real ranks cannot run here, or None."""
    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with gloo is not available"
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
    except OSError as err:
        return f"cannot listen on loopback: {err}"
    return None


needs_ranks = pytest.mark.skipif(can_spawn() is not None, reason=str(can_spawn()))


# --- the sharded order and the global batch ---------------------------------------------------

@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n, batch_size", [(448, 32), (450, 32), (97, 12), (49, 48)])
def test_shards_cover_every_sample_once_in_the_one_process_order(world_size, n, batch_size):
    order = batches(n, batch_size, True, torch.Generator().manual_seed(0))
    counted = torch.zeros(n, dtype=torch.float64)
    for idx in order:
        parts = [share(len(idx), Ranks(r, world_size)) for r in range(world_size)]
        for part in parts:
            counted.index_add_(0, idx[part.rows], torch.full((len(idx[part.rows]),), part.count, dtype=torch.float64))
        if len(idx) >= world_size:  # each rank its contiguous share: in rank order, the global batch itself
            assert torch.equal(torch.cat([idx[p.rows] for p in parts]), idx)
            assert max(len(idx[p.rows]) for p in parts) - min(len(idx[p.rows]) for p in parts) <= 1
        else:  # fewer samples than ranks: each computes all, counting 1/world_size of each
            assert all(p.rows == slice(0, len(idx)) and p.loss_scale == 1 for p in parts)
    assert torch.allclose(counted, torch.ones(n, dtype=torch.float64))  # every sample once per epoch
    evaluated = torch.cat([eval_rows(n, Ranks(r, world_size)) for r in range(world_size)])
    assert torch.equal(evaluated, torch.arange(n))


def test_global_batch_splits_evenly():
    check_batch_size(32, Ranks(0, 4))
    with pytest.raises(DistreeError, match="batch size 32 does not split over 3 ranks"):
        check_batch_size(32, Ranks(0, 3))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_gradient_worker(rank: int, world_size: int, port: int, out: dict) -> None:
    """One rank: DDP gradients of a small model on this rank's share of global batches of 6, 5 and 1."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    ranks = Ranks(rank, world_size)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    net = data_parallel(model, torch.device("cpu"), ranks)
    x, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2])
    grads = []
    for size in (6, 5, 1):
        part = share(size, ranks)
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[:size][part.rows]), y[:size][part.rows])
        (loss * part.loss_scale).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    rows = gather_rows(x[:5][eval_rows(5, ranks)], 5, ranks)
    if rank == 0:
        out.update(grads=grads, rows=rows)
    # DDP goes before the group, as in training (`ranks.joined`): where its reducer held the group's last
    # reference, the group's destructor joined gloo's worker threads holding the GIL, while a worker
    # still needed the GIL to free the all_gather's tensors, and the rank hung (4 of 20 runs).
    del net
    dist.destroy_process_group()


@needs_ranks
def test_ddp_gradient_is_the_global_batch_gradient():
    """On 2 ranks, even and uneven global batches (and one of a single sample) get the gradient of
    the whole batch in one process; gather_rows puts uneven shares back together in order."""
    with mp.Manager() as manager:
        out = manager.dict()
        ranks = mp.start_processes(ddp_gradient_worker, args=(2, free_port(), out), nprocs=2, start_method="spawn",
                                   join=False)
        deadline = time.monotonic() + WAIT
        try:
            while not ranks.join(timeout=1):  # an exit code, or a rank's error raised here
                assert time.monotonic() < deadline, f"the 2 ranks did not finish within {WAIT} s"
        finally:
            for process in ranks.processes:
                process.kill()
        grads, rows = out["grads"], out["rows"]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2])
    for size, ddp in zip((6, 5, 1), grads):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:size]), y[:size]).backward()
        for p, g in zip(model.parameters(), ddp):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(rows, x[:5])


# --- mixed precision through the fused exit head -------------------------------------------------

def test_exit_head_backward_under_bf16_autocast():
    """Under CPU autocast the head runs on the half-type activation with float32 accumulation:
    feat in x's type, score float32, the weight's gradient float32 (the parameter's), all finite and
    close to float32's."""
    exit_head_autocast()
    torch.manual_seed(0)
    conv, head = torch.nn.Conv2d(3, 16, 3, padding=1), ExitHead(16, 10, backend="cpp")
    x = torch.randn(8, 3, 8, 8)

    def run(amp: bool):
        conv.zero_grad()
        head.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            h = conv(x)  # (8, 16, 8, 8)
            h.retain_grad()
            first, _, _ = head(h)
            feat, score, exit = head(h, ref=first.detach())
            loss = feat.float().square().mean()
        loss.backward()
        return h, feat, score, exit, [t.grad.clone() for t in (head.weight, head.bias, conv.weight)]

    h, feat, score, exit, grads = run(True)
    assert (h.dtype, feat.dtype, score.dtype, exit.dtype, h.grad.dtype) == (
        torch.bfloat16, torch.bfloat16, torch.float32, torch.bool, torch.bfloat16)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    _, _, _, _, exact = run(False)
    for g, e in zip(grads, exact):
        assert (g - e).norm() <= 0.05 * e.norm()  # bf16 keeps about 3 significant digits


# --- bad input -----------------------------------------------------------------------------------

def cli(*args) -> int:
    return main([str(a) for a in args])


def error_of(capsys, *args) -> str:
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


TORCHRUN_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


def test_bad_launches_are_one_line_on_rank_0_only(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert "--amp fp16 needs a GPU" in error_of(capsys, "train-teacher", "--out", out, "--preset", "smoke",
                                                "--amp", "fp16")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "WORLD_SIZE is set but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not" in error_of(
        capsys, "train-teacher", "--out", out, "--preset", "smoke")
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    # refused before joining the group (which would wait for the 3 ranks)
    assert "batch size 32 does not split over 3 ranks" in error_of(capsys, "train-teacher", "--out", out,
                                                                   "--preset", "smoke")
    monkeypatch.setenv("RANK", "1")
    assert cli("train-teacher", "--out", out, "--preset", "smoke") == 2
    assert capsys.readouterr().err == ""  # the other ranks exit quietly with the same code


def test_partition_under_torchrun_runs_on_rank_0_alone(tmp_path, monkeypatch):
    for key, value in {**TORCHRUN_ENV, "RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    assert cli("partition", "--run", tmp_path / "no-teacher-here") == 0  # rank 1 neither reads nor writes
    assert not (tmp_path / "no-teacher-here").exists()
    monkeypatch.setenv("RANK", "0")
    assert cli("partition", "--run", tmp_path / "no-teacher-here") == 2  # rank 0 does the work, and fails here


# --- real runs: one process against two ranks ------------------------------------------------------

def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def one_process(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distree", *map(str, args)], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def two_ranks(*args) -> subprocess.Popen:
    """torchrun with 2 gloo ranks on this machine; `--` keeps torchrun from reading distree's options
    (it would take --run for its own --run-path)."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "distree", "--", *map(str, args)], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen) -> str:
    """Waits for a process that must succeed; its output."""
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Smoke runs trained in one process (`one`) and on 2 ranks (`two`), from the same partition."""
    root = tmp_path_factory.mktemp("ddp")
    if can_spawn() is not None:
        pytest.skip(can_spawn())
    one, two = one_process("train-teacher", "--out", root / "one", "--preset", "smoke"), \
        two_ranks("train-teacher", "--out", root / "two", "--preset", "smoke")
    finished(one)
    finished(two)
    finished(one_process("partition", "--run", root / "one"))
    shutil.copy(root / "one" / "partition.json", root / "two" / "partition.json")
    # the 2-rank teacher has its own filters; students on the 1-process teacher compare like with like
    shutil.copytree(root / "one", root / "two-students")
    students = [one_process("train-students", "--run", root / "one"),
                two_ranks("train-students", "--run", root / "two-students")]
    for proc in students:
        finished(proc)
    return root


def history(run: Path, name: str) -> list[dict]:
    return load_checkpoint(run / name)["history"]


@needs_ranks
def test_two_ranks_train_like_one_process(runs):
    """Same epochs and learning rates; accuracies within the tolerance of a tiny run.

    The smoke preset evaluates on 128 test and 64 val images after 3 and 2 epochs, and each rank
    normalises BatchNorm over its 16 of the 32 samples, so the runs part ways within an epoch:
    one process and 2 ranks measured 63% and 61% at the students' last exit, 85% and 70% at exit 2,
    7.5 points apart on average over the exits.
    """
    for one, two, name in ((runs / "one", runs / "two", "teacher.pt"),
                           (runs / "one", runs / "two-students", "students.pt")):
        h1, h2 = history(one, name), history(two, name)
        assert [(r["epoch"], r["lr"]) for r in h1] == [(r["epoch"], r["lr"]) for r in h2]
        assert h2[0]["train_loss"] == pytest.approx(h1[0]["train_loss"], rel=0.05)  # before the paths part
        tests = [k for k in h1[-1] if k.startswith("test_acc")]
        gaps = [abs(h1[-1][k] - h2[-1][k]) for k in tests]
        assert max(gaps) <= 0.25 and sum(gaps) / len(gaps) <= 0.15, dict(zip(tests, gaps))
    assert history(runs / "two", "teacher.pt")[-1]["test_acc"] >= 0.9


@needs_ranks
def test_two_rank_checkpoints_load_in_one_process(runs):
    """The saved model is the one the ranks evaluated: one process measures the same accuracies."""
    config = load_checkpoint(runs / "two" / "teacher.pt")["config"]
    data = run_splits(runs / "two", config)
    teacher = load_teacher(runs / "two")
    acc = split_accuracy(lambda x, y: (teacher(x).argmax(1) == y)[None], data.test, 1, "cpu")
    assert acc[0] == history(runs / "two", "teacher.pt")[-1]["test_acc"]
    students = load_student_model(runs / "two-students")
    last = history(runs / "two-students", "students.pt")[-1]
    assert exit_accuracies(students, data.test) == [last[f"test_acc_exit{j}"] for j in range(1, 8)]


def rank_of(pid: int) -> int:
    """The RANK torchrun gave a worker process."""
    variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in variables if v.startswith(b"RANK="))[5:])


@needs_ranks
def test_sigkill_of_a_rank_then_resume(runs, tmp_path):
    """Kill rank 1 of a 2-rank run after its first checkpoint: torchrun ends the job; --resume on
    2 ranks ends exactly where the uninterrupted 2-rank run ended, and on 1 process it finishes too."""
    run = tmp_path / "killed"
    proc = two_ranks("train-teacher", "--out", run, "--preset", "smoke")
    deadline = time.monotonic() + WAIT
    while not (run / "teacher.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ranks = {rank_of(int(w)): int(w) for w in workers}
    os.kill(ranks[1], signal.SIGKILL)
    proc.communicate(timeout=WAIT)
    assert proc.returncode != 0
    assert 1 <= load_checkpoint(run / "teacher.pt")["epoch"] < 3, "the kill came too late to test a resume"
    shutil.copytree(run, tmp_path / "on-one")

    finished(two_ranks("train-teacher", "--out", run, "--resume"))
    same, whole = load_checkpoint(run / "teacher.pt"), load_checkpoint(runs / "two" / "teacher.pt")
    for key, value in whole["model"].items():
        assert torch.equal(same["model"][key], value), key
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(same["history"]) == strip(whole["history"])

    out = finished(one_process("train-teacher", "--out", tmp_path / "on-one", "--resume"))
    assert "resuming a run of 2 rank(s) on 1" in out
    assert load_checkpoint(tmp_path / "on-one" / "teacher.pt")["epoch"] == 3


@needs_ranks
def test_resume_with_another_precision_is_refused(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs / "one", run)
    assert "trained with --amp off; resume it with --amp off, not bf16" in error_of(
        capsys, "train-teacher", "--out", run, "--resume", "--amp", "bf16")


@needs_ranks
def test_students_train_under_bf16(runs, tmp_path, capsys):
    """A CPU run with --amp bf16 trains through the fused heads' autocast rule; the reference heads are refused."""
    run = tmp_path / "run"
    shutil.copytree(runs / "one", run)
    (run / "students.pt").unlink()
    assert cli("train-students", "--run", run, "--amp", "bf16") == 0
    last, exact = history(run, "students.pt")[-1], history(runs / "one", "students.pt")[-1]
    gaps = [abs(last[f"test_acc_exit{j}"] - exact[f"test_acc_exit{j}"]) for j in range(1, 8)]
    assert last["test_acc_exit7"] > 0.3 and sum(gaps) / 7 <= 0.1, gaps  # chance is 0.1; measured: mean gap 0.04
    (run / "students.pt").unlink()
    capsys.readouterr()  # the run's progress bars
    assert "needs the fused exit heads" in error_of(capsys, "train-students", "--run", run, "--amp", "bf16",
                                                    "--head-backend", "reference")
