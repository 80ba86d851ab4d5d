"""Trains the teacher WideResNet with cross-entropy, and reads its outputs for the students."""
import math

import torch
import torch.nn.functional as F

from distree.data import batches
from distree.losses import at
from distree.run_dir import build_teacher, config_from_dict, run_splits, write_config
from distree.training.loop import OptimConfig, Phase, fit, make_optimizer, sgd_step, split_accuracy, train_epoch
from distree.training.precision import Precision
from distree.training.ranks import SINGLE, Ranks, data_parallel, main_first, sync_buffers
from distree.training.shards import Share


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    return x.to(device).contiguous(memory_format=torch.channels_last)  # (B, C, S, S)


def train_batch(dataset, idx: torch.Tensor, part: Share, augment: bool, generator: torch.Generator):
    """This rank's images (b, C, S, S) and labels (b,) of the global batch idx.

    With augmentation every rank draws the crops and flips of the whole global batch (and keeps
    its part): the generator then stays in step on every rank, and each image gets the view it
    gets in one process.
    """
    if augment:
        x, y = dataset.batch(idx, True, generator)
        return x[part.rows], y[part.rows]
    return dataset.batch(idx[part.rows])


def train_teacher(run_dir, config: dict, resume: bool, device="cpu", precision: Precision = Precision(),
                  ranks: Ranks = SINGLE) -> list[dict]:
    """Trains (or resumes) the teacher of a run on this rank's shards; returns the per-epoch history.

    The data's shape (classes, channels, image size, class names) and its preprocessing (how an
    image becomes an input, which serving and export apply to image files) are recorded in the
    run's config.json here, where the data is first read: a folder's are known only then.
    """
    data = main_first(ranks, lambda: run_splits(run_dir, config))
    recorded = {"data_shape": data.shape(), "preprocessing": data.preprocessing.to_dict()}
    if any(config.get(k) != v for k, v in recorded.items()):
        config.update(recorded)
        if ranks.main:
            write_config(run_dir, config)
    cfg = config_from_dict(OptimConfig, config["teacher"]["optim"])
    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_teacher(config).to(device)
    net = data_parallel(model, torch.device(device), ranks)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer, schedule = make_optimizer(model, cfg, math.ceil(len(data.train) / cfg.batch_size))
    scaler = precision.scaler()
    phase = Phase("teacher", run_dir, model, optimizer, schedule, generator, config, scaler, precision.mode, ranks)

    def step(idx, part):
        x, y = train_batch(data.train, idx, part, cfg.augment, generator)
        with precision.autocast():
            z = net(to_device(x, device))  # (b, K)
            loss = F.cross_entropy(z, y.to(device))
        sgd_step(loss if part.loss_scale == 1 else loss * part.loss_scale, model, optimizer, schedule, cfg.clip_grad,
                 scaler)
        return loss.detach(), (z.argmax(1).cpu() == y).sum()

    def run_epoch(epoch):
        model.train()
        order = batches(len(data.train), cfg.batch_size, True, generator)
        return train_epoch(step, order, f"teacher {epoch + 1}/{cfg.epochs}", ranks)

    def evaluate(split):
        sync_buffers(model, ranks)
        model.eval()

        def hits(x, y):
            with precision.autocast():
                return (model(x).argmax(1).cpu() == y)[None]  # (1, B)

        return {f"{split}_acc": split_accuracy(hits, getattr(data, split), 1, device, ranks)[0]}

    return fit(phase, cfg.epochs, run_epoch, evaluate, resume)


@torch.no_grad()
def teacher_outputs(teacher, x: torch.Tensor, groups: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits z_t (B, K) and attention maps q_t (N, B, h*w) of each student's filters P_i."""
    a = teacher.features(x)  # (B, C, 8, 8) after BN-ReLU
    return teacher.classify(a), torch.stack([at(a[:, g]) for g in groups])
