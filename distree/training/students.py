"""Joint training of the N students and the aggregator against the frozen teacher (KD + AT).

The teacher's forward pass costs more than training both students, so when training sees
each image in one fixed view (no augmentation) its logits and its attention maps on each
student's filters are computed once, before the first epoch, and looked up by index: the
same numbers the teacher would give at every step, at a fraction of the cost. With
augmentation each step sees a new view, and the teacher runs on it.
"""
import math
from pathlib import Path

import torch

from distree.data import batches
from distree.errors import DistreeError
from distree.losses import LossConfig, drop_students, joint_loss
from distree.models.student import NUM_EXITS
from distree.training.partition import load_partition
from distree.run_dir import PARTITION, build_students, config_from_dict, load_teacher, run_splits
from distree.training.loop import OptimConfig, Phase, fit, make_optimizer, predict, sgd_step, train_epoch
from distree.training.teacher import teacher_outputs, to_device


class TeacherTargets:
    """z_t (B, K) and q_t (N, B, h*w) for a batch: cached per training image, or computed on the view."""

    def __init__(self, teacher, groups: list[list[int]], cache_from=None, device="cpu"):
        self.teacher, self.groups, self.device = teacher, groups, device
        self.cache = None
        if cache_from is not None:
            outs, _ = predict(lambda x: teacher_outputs(teacher, x, groups), cache_from, 500, device)
            self.cache = torch.cat([z for z, _ in outs]), torch.cat([q for _, q in outs], 1)  # (M, K), (N, M, hw)

    def __call__(self, idx: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is None:
            return teacher_outputs(self.teacher, x, self.groups)
        z, q = self.cache
        return z[idx].to(self.device), q[:, idx].to(self.device)


def train_students(run_dir, config: dict, resume: bool, device="cpu") -> list[dict]:
    """Trains (or resumes) the run's students; returns the per-epoch history."""
    students = config["students"]
    n = students["num_students"]
    teacher = load_teacher(run_dir).to(device)
    partition = load_partition(Path(run_dir) / PARTITION, teacher.num_filters, n)
    cfg = config_from_dict(OptimConfig, students["optim"])
    loss_cfg = config_from_dict(LossConfig, students["loss"])
    if len(loss_cfg.exit_weights) != NUM_EXITS:
        raise DistreeError(f"exit_weights needs {NUM_EXITS} values, got {loss_cfg.exit_weights}")
    data = run_splits(run_dir, config)
    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_students(config).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer, schedule = make_optimizer(model, cfg, math.ceil(len(data.train) / cfg.batch_size))
    phase = Phase("students", run_dir, model, optimizer, schedule, generator, config)
    targets = TeacherTargets(teacher, partition.groups, None if cfg.augment else data.train, device)

    def step(idx):
        x, y = data.train.batch(idx, cfg.augment, generator)
        x, y = to_device(x, device), y.to(device)
        z_t, q_t = targets(idx, x)  # (B, K), (N, B, 64)
        exits = torch.randint(0, NUM_EXITS, (n,), generator=generator)  # (N,): the mixed term's exits
        u, maps = model(x)  # (N, 7, B, K)
        u = drop_students(u, loss_cfg.dropout, generator)
        loss = joint_loss(u, maps, model.aggregate, y, z_t, q_t, exits.to(device), loss_cfg)
        sgd_step(loss, model, optimizer, schedule, cfg.clip_grad)
        return loss.detach(), (model.aggregate(u[:, -1]).argmax(1) == y).sum()

    def run_epoch(epoch):
        model.train()
        order = batches(len(data.train), cfg.batch_size, True, generator)
        return train_epoch(step, order, f"students {epoch + 1}/{cfg.epochs}")

    def evaluate(split):
        model.eval()
        acc = exit_accuracies(model, getattr(data, split), device)
        return {f"{split}_acc_exit{j + 1}": a for j, a in enumerate(acc)}

    return fit(phase, cfg.epochs, run_epoch, evaluate, resume)


def exit_accuracies(model, dataset, device="cpu") -> list[float]:
    """Accuracy when every student exits at j, for j = 1..7."""
    logits, y = predict(lambda x: torch.stack([model.aggregate(uj) for uj in model(x)[0].unbind(1)]),
                        dataset, 500, device)
    hits = torch.cat(logits, 1).argmax(2).cpu() == y  # (7, M)
    return hits.float().mean(1).tolist()
