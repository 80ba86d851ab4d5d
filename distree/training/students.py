"""Joint training of the N students and the aggregator against the frozen teacher (KD + AT).

The teacher's forward pass costs more than training both students, so when training sees
each image in one fixed view (no augmentation) its logits and its attention maps on each
student's filters are computed once, before the first epoch, and looked up by index: the
same numbers the teacher would give at every step, at a fraction of the cost. With
augmentation each step sees a new view, and the teacher runs on it.

Under torchrun the cache is still computed once: each rank runs the teacher on its share of
the training set and all_gather gives every rank the whole, since every rank trains on
samples from all of it over the epochs. With augmentation each rank runs the teacher on its
own rows of the batch.
"""
import math
from pathlib import Path

import torch

from distree.data import batches, forward_batch
from distree.errors import DistreeError
from distree.losses import LossConfig, drop_students, fail_students, joint_loss
from distree.models.student import NUM_EXITS
from distree.training.partition import load_partition
from distree.run_dir import PARTITION, build_students, config_from_dict, load_teacher, run_splits
from distree.training.loop import (OptimConfig, Phase, fit, make_optimizer, predict, sgd_step, split_accuracy,
                                   train_epoch)
from distree.training.precision import Precision
from distree.training.ranks import SINGLE, Ranks, data_parallel, main_first, gather_rows, sync_buffers
from distree.training.shards import Share, eval_rows
from distree.training.teacher import teacher_outputs, to_device, train_batch
from distree_kernels.backends import resolve


class TeacherTargets:
    """z_t (B, K) and q_t (N, B, h*w) for a batch: cached per training image, or computed on the view."""

    def __init__(self, teacher, groups: list[list[int]], cache_from=None, device="cpu", ranks: Ranks = SINGLE):
        self.teacher, self.groups, self.device = teacher, groups, device
        self.cache = None
        if cache_from is not None:
            m = len(cache_from)
            outs, _ = predict(lambda x: teacher_outputs(teacher, x, groups), cache_from, forward_batch(device), device,
                              eval_rows(m, ranks))
            z, q = torch.cat([z for z, _ in outs]), torch.cat([q for _, q in outs], 1)  # (m_r, K), (N, m_r, hw)
            self.cache = gather_rows(z, m, ranks), gather_rows(q, m, ranks, dim=1)  # (M, K), (N, M, hw)

    def __call__(self, idx: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is None:
            return teacher_outputs(self.teacher, x, self.groups)
        z, q = self.cache
        return z[idx].to(self.device), q[:, idx].to(self.device)


def train_students(run_dir, config: dict, resume: bool, device="cpu", precision: Precision = Precision(),
                   ranks: Ranks = SINGLE) -> list[dict]:
    """Trains (or resumes) the run's students on this rank's shards; returns the per-epoch history."""
    students = config["students"]
    n = students["num_students"]
    teacher = load_teacher(run_dir).to(device)
    partition = load_partition(Path(run_dir) / PARTITION, teacher.num_filters, n)
    cfg = config_from_dict(OptimConfig, students["optim"])
    loss_cfg = config_from_dict(LossConfig, students["loss"])
    if len(loss_cfg.exit_weights) != NUM_EXITS:
        raise DistreeError(f"exit_weights needs {NUM_EXITS} values, got {loss_cfg.exit_weights}")
    data = main_first(ranks, lambda: run_splits(run_dir, config))
    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_students(config).to(device)
    if precision.mode != "off" and resolve(students["model"]["head_backend"], torch.device(device)) == "reference":
        raise DistreeError(f"--amp {precision.mode} needs the fused exit heads; the reference heads have no "
                           "autocast rule (drop --head-backend reference)")
    net = data_parallel(model, torch.device(device), ranks)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer, schedule = make_optimizer(model, cfg, math.ceil(len(data.train) / cfg.batch_size))
    scaler = precision.scaler()
    phase = Phase("students", run_dir, model, optimizer, schedule, generator, config, scaler, precision.mode, ranks)
    with precision.autocast():
        targets = TeacherTargets(teacher, partition.groups, None if cfg.augment else data.train, device, ranks)

    def step(idx, part):
        x, y = train_batch(data.train, idx, part, cfg.augment, generator)
        x, y = to_device(x, device), y.to(device)
        exits = torch.randint(0, NUM_EXITS, (n,), generator=generator)  # (N,): the mixed term's exits
        with precision.autocast():
            z_t, q_t = targets(idx[part.rows], x)  # (b, K), (N, b, 64)
            u, maps = net(x)  # (N, 7, b, K)
            u = dropped(u, loss_cfg, generator, part, len(idx))
            loss = joint_loss(u, maps, model.aggregate, y, z_t.float(), q_t.float(), exits.to(device), loss_cfg)
        sgd_step(loss if part.loss_scale == 1 else loss * part.loss_scale, model, optimizer, schedule, cfg.clip_grad,
                 scaler)
        return loss.detach(), (model.aggregate(u[:, -1]).argmax(1) == y).sum()

    def run_epoch(epoch):
        model.train()
        order = batches(len(data.train), cfg.batch_size, True, generator)
        return train_epoch(step, order, f"students {epoch + 1}/{cfg.epochs}", ranks)

    def evaluate(split):
        sync_buffers(model, ranks)
        model.eval()
        acc = exit_accuracies(model, getattr(data, split), device, precision, ranks)
        return {f"{split}_acc_exit{j + 1}": a for j, a in enumerate(acc)}

    return fit(phase, cfg.epochs, run_epoch, evaluate, resume)


def dropped(u: torch.Tensor, cfg: LossConfig, generator: torch.Generator, part: Share, size: int) -> torch.Tensor:
    """Student dropout, then failout (`distree.losses`), on this rank's rows u (N, 7, b, K), the draws
    made for the whole global batch of `size` samples, so that the generator stays in step on every rank."""
    def drop(t):
        return fail_students(drop_students(t, cfg.dropout, generator), cfg.failout, generator)

    if part.rows == slice(0, size):
        return drop(u)
    keep = drop(torch.ones(u.shape[0], 1, size, 1))[:, :, part.rows]  # (N, 1, b, 1)
    return u * keep.to(u.device)


def exit_accuracies(model, dataset, device="cpu", precision: Precision = Precision(),
                    ranks: Ranks = SINGLE) -> list[float]:
    """Accuracy when every student exits at j, for j = 1..7."""
    def hits(x, y):
        with precision.autocast():
            u = model(x)[0]  # (N, 7, B, K)
        return torch.stack([model.aggregate(uj) for uj in u.unbind(1)]).argmax(2).cpu() == y  # (7, B)

    return split_accuracy(hits, dataset, NUM_EXITS, device, ranks)
