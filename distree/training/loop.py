"""The epoch loop shared by teacher and students: SGD and its schedule, progress bars,
evaluation each epoch, an atomic checkpoint each epoch, exact resume, and metrics.csv.

Under torchrun every rank runs this loop on its share of each global batch (shards.py); the
metrics are summed over the ranks, and rank 0 alone writes checkpoints, metrics.csv and the
progress bar.
"""
import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from distree.data import forward_batch
from distree.errors import DistreeError
from distree.run_dir import METRICS, load_checkpoint, load_state, save_atomic
from distree.training.ranks import SINGLE, Ranks, all_sum
from distree.training.shards import eval_rows, share

SCHEDULES = ("step", "cosine")


@dataclass
class OptimConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "step"  # "step": lr x gamma at each milestone; "cosine": cosine decay to 0 after warm-up
    milestones: list[int] = field(default_factory=lambda: [60, 120, 160])  # epochs, for "step"
    gamma: float = 0.2
    warmup_epochs: float = 0.0  # linear warm-up from 0, in (fractional) epochs
    clip_grad: float = 0.0  # max gradient norm; 0 means no clipping
    augment: bool = True  # reflect pad 4, random crop (and flip where the dataset allows)
    seed: int = 0  # data order, augmentation and every random draw of training


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a step, as a fraction of cfg.lr."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
    done = (step - warmup) / max(1.0, cfg.epochs * steps_per_epoch - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, steps_per_epoch: int):
    """SGD with (Nesterov) momentum and weight decay, and its per-step learning-rate schedule."""
    if cfg.schedule not in SCHEDULES:
        raise DistreeError(f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch))
    return optimizer, schedule


def sgd_step(loss: torch.Tensor, model: torch.nn.Module, optimizer, schedule, clip_grad: float,
             scaler: torch.amp.GradScaler) -> None:
    """One step; under DDP the backward pass also averages the gradients over the ranks.

    scaler: fp16's gradient scaler, or a disabled one, whose scale, unscale_, step and update
    are plain loss, nothing, optimizer.step and nothing.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad > 0:
        scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    schedule.step()


def train_epoch(step, index_batches: list[torch.Tensor], desc: str, ranks: Ranks = SINGLE) -> dict:
    """Runs step(idx, part) -> (mean loss, number correct) on this rank's share of each global
    batch, with a progress bar on rank 0; the metrics are the epoch's over every rank."""
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(index_batches, desc=desc, unit="batch", leave=False, mininterval=1.0, dynamic_ncols=True,
               disable=not ranks.main)
    for idx in bar:
        part = share(len(idx), ranks)
        loss, hits = step(idx, part)
        n = (part.rows.stop - part.rows.start) * part.count
        loss_sum, correct, seen = loss_sum + float(loss) * n, correct + int(hits) * part.count, seen + n
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    loss_sum, correct, seen = all_sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64), ranks).tolist()
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


@dataclass
class Phase:
    """One training job of a run directory: its name names the checkpoint (name.pt) and metrics rows."""
    name: str
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    config: dict  # the run's config, stored in the checkpoint so it describes itself
    scaler: torch.amp.GradScaler
    amp: str = "off"  # --amp of the run: a resume must use the same
    ranks: Ranks = SINGLE

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / f"{self.name}.pt"

    def state(self, epoch: int, history: list[dict]) -> dict:
        return {"epoch": epoch, "history": history, "config": self.config, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(), "amp": self.amp, "world_size": self.ranks.world_size,
                "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}}

    def restore(self) -> tuple[int, list[dict]]:
        """The checkpoint's state on every rank; any rank count may resume it (shards.py makes the
        order and the global batch independent of it), the precision must be the same."""
        ckpt = load_checkpoint(self.path)
        amp, world_size = ckpt.get("amp", "off"), ckpt.get("world_size", 1)  # older checkpoints: float32, 1 rank
        if amp != self.amp:
            raise DistreeError(f"{self.path} was trained with --amp {amp}; resume it with --amp {amp}, not {self.amp}")
        if world_size != self.ranks.world_size and self.ranks.main:
            tqdm.write(f"{self.name}: resuming a run of {world_size} rank(s) on {self.ranks.world_size}; the order "
                       "and global batch are the same, only BatchNorm's per-rank statistics change")
        try:
            load_state(self.model, ckpt["model"], self.path)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.schedule.load_state_dict(ckpt["schedule"])
            self.scaler.load_state_dict(ckpt.get("scaler", {}))
            self.generator.set_state(ckpt["rng"]["generator"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            return int(ckpt["epoch"]), list(ckpt["history"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise DistreeError(f"checkpoint {self.path} cannot be resumed: {str(err).splitlines()[0]}") from None


def fit(phase: Phase, epochs: int, run_epoch, evaluate, resume: bool) -> list[dict]:
    """Trains epoch by epoch from the last checkpoint (with resume) to `epochs`; returns the history.

    run_epoch(epoch) -> train metrics; evaluate(split) -> metrics on "val" (each epoch) and
    "test" (after the last epoch only: the test set never chooses anything). Every rank runs
    both; rank 0 writes the checkpoint and metrics.
    """
    start, history = 0, []
    if phase.path.exists():
        if not resume:
            raise DistreeError(f"{phase.path} exists; pass --resume to continue it")
        start, history = phase.restore()
        if start >= epochs and phase.ranks.main:
            tqdm.write(f"{phase.name}: already trained for {start} epochs")
    for epoch in range(start, epochs):
        began = time.perf_counter()
        row = {"epoch": epoch + 1, "lr": phase.optimizer.param_groups[0]["lr"], **run_epoch(epoch)}
        row.update(evaluate("val"))
        if epoch + 1 == epochs:
            row.update(evaluate("test"))
        row["seconds"] = round(time.perf_counter() - began, 2)
        history.append(row)
        if not phase.ranks.main:
            continue
        save_atomic(phase.state(epoch + 1, history), phase.path)
        write_metrics(phase.run_dir, phase.name, history)
        tqdm.write(f"{phase.name} epoch {epoch + 1}/{epochs}: " +
                   ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
    return history


def write_metrics(run_dir, name: str, history: list[dict]) -> None:
    """Rewrites metrics.csv with this phase's rows replaced by its history (atomically)."""
    path = Path(run_dir) / METRICS
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("phase") != name]
    rows += [{"phase": name, **r} for r in history]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, keys, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


@torch.no_grad()
def predict(forward, dataset, batch_size: int, device, rows: torch.Tensor = None) -> tuple[list, torch.Tensor]:
    """forward(x) over the samples `rows` of a split (default all), in order, batched: the list
    of its outputs, and the labels (M,)."""
    outs, labels = [], []
    for idx in (torch.arange(len(dataset)) if rows is None else rows).split(batch_size):
        x, y = dataset.batch(idx)
        outs.append(forward(x.to(device).contiguous(memory_format=torch.channels_last)))
        labels.append(y)
    return outs, torch.cat(labels)


@torch.no_grad()
def split_accuracy(hits, dataset, width: int, device, ranks: Ranks = SINGLE) -> list[float]:
    """Accuracies over a whole split from hits(x, y) -> (width, B) bool: each rank runs its share
    and the counts of correct answers are summed over the ranks."""
    counts = torch.zeros(width, dtype=torch.int64)
    for idx in eval_rows(len(dataset), ranks).split(forward_batch(device)):
        x, y = dataset.batch(idx)
        counts += hits(x.to(device).contiguous(memory_format=torch.channels_last), y).sum(1)
    return (all_sum(counts, ranks).float() / len(dataset)).tolist()  # = hits.float().mean(): float32
