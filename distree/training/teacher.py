"""Trains the teacher WideResNet with cross-entropy, and reads its outputs for the students."""
import math

import torch
import torch.nn.functional as F

from distree.data import batches
from distree.losses import at
from distree.run_dir import build_teacher, config_from_dict, run_splits, write_config
from distree.training.loop import OptimConfig, Phase, fit, make_optimizer, predict, sgd_step, train_epoch


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    return x.to(device).contiguous(memory_format=torch.channels_last)  # (B, C, S, S)


def train_teacher(run_dir, config: dict, resume: bool, device="cpu") -> list[dict]:
    """Trains (or resumes) the teacher of a run; returns the per-epoch history.

    The data's shape (classes, channels, image size, class names) and its preprocessing (how an
    image becomes an input, which serving and export apply to image files) are recorded in the
    run's config.json here, where the data is first read: a folder's are known only then.
    """
    data = run_splits(run_dir, config)
    recorded = {"data_shape": data.shape(), "preprocessing": data.preprocessing.to_dict()}
    if any(config.get(k) != v for k, v in recorded.items()):
        config.update(recorded)
        write_config(run_dir, config)
    cfg = config_from_dict(OptimConfig, config["teacher"]["optim"])
    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_teacher(config).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer, schedule = make_optimizer(model, cfg, math.ceil(len(data.train) / cfg.batch_size))
    phase = Phase("teacher", run_dir, model, optimizer, schedule, generator, config)

    def step(idx):
        x, y = data.train.batch(idx, cfg.augment, generator)
        z = model(to_device(x, device))  # (B, K)
        loss = F.cross_entropy(z, y.to(device))
        sgd_step(loss, model, optimizer, schedule, cfg.clip_grad)
        return loss.detach(), (z.argmax(1).cpu() == y).sum()

    def run_epoch(epoch):
        model.train()
        order = batches(len(data.train), cfg.batch_size, True, generator)
        return train_epoch(step, order, f"teacher {epoch + 1}/{cfg.epochs}")

    def evaluate(split):
        model.eval()
        logits, y = predict(model, getattr(data, split), 500, device)
        return {f"{split}_acc": (torch.cat(logits).argmax(1).cpu() == y).float().mean().item()}

    return fit(phase, cfg.epochs, run_epoch, evaluate, resume)


@torch.no_grad()
def teacher_outputs(teacher, x: torch.Tensor, groups: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits z_t (B, K) and attention maps q_t (N, B, h*w) of each student's filters P_i."""
    a = teacher.features(x)  # (B, C, 8, 8) after BN-ReLU
    return teacher.classify(a), torch.stack([at(a[:, g]) for g in groups])
