"""The joint training losses of DistrEE: knowledge distillation, attention transfer, mixed exits.

`kd` is Hinton et al.'s distillation as in the Attention Transfer code (Zagoruyko & Komodakis,
"Paying More Attention to Attention", 2017), which also gives `at` and `at_loss`.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from distree.models.student import NUM_EXITS


@dataclass
class LossConfig:
    tau: float = 4.0  # distillation temperature
    alpha: float = 0.9  # weight of the teacher's soft targets against the labels
    beta: float = 1e3  # weight of attention transfer
    exit_weights: list[float] = field(default_factory=lambda: [1.0] * NUM_EXITS)  # w_j
    mixed_weight: float = 1.0  # weight of the KD loss at a random exit per student; 0 turns it off
    dropout: float = 0.0  # probability that a sample loses one student's feature
    failout: float = 0.0  # probability that a sample loses each student's feature, independently, never all


def kd(z: torch.Tensor, y: torch.Tensor, z_t: torch.Tensor, tau: float, alpha: float) -> torch.Tensor:
    """(1 - alpha) CE(z, y) + alpha tau^2 KL(softmax(z_t / tau) || softmax(z / tau)), batch-averaged."""
    soft = F.kl_div(F.log_softmax(z / tau, 1), F.log_softmax(z_t / tau, 1), reduction="batchmean", log_target=True)
    return (1 - alpha) * F.cross_entropy(z, y) + alpha * tau ** 2 * soft


def at(a: torch.Tensor) -> torch.Tensor:
    """Attention map q(A) (B, H*W): the L2-normalised channel mean of A^2, for A (B, C, H, W)."""
    return F.normalize(a.pow(2).mean(1).flatten(1))


def pooled(a: torch.Tensor, size: int) -> torch.Tensor:
    """a (B, C, H, W) average-pooled to (B, C, size, size). Where size divides H and W this is
    avg_pool2d, and where it equals them a itself: the same numbers as adaptive_avg_pool2d, bit for
    bit, whose backward on CPU costs up to 13x more (2.4 against 0.18 ms for a (128, 64, 8, 8) map)."""
    h, w = a.shape[-2:]
    if (h, w) == (size, size):
        return a
    if h % size == 0 and w % size == 0:
        return F.avg_pool2d(a, (h // size, w // size))
    return F.adaptive_avg_pool2d(a, size)


def at_loss(a: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the student's attention map, pooled to the teacher's size, and q_t (B, h*w)."""
    return (at(pooled(a, round(q_t.shape[1] ** 0.5))) - q_t).pow(2).mean()


def mixed_exit_features(u: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    """u_(i, e_i) (N, B, K) from u (N, 7, B, K): student i's feature at its own exit e_i."""
    return u[torch.arange(u.shape[0], device=u.device), exits.to(u.device)]


def drop_students(u: torch.Tensor, p: float, generator: torch.Generator = None) -> torch.Tensor:
    """Zeroes one random student's features (at every exit) for a fraction p of the samples."""
    N, _, B, _ = u.shape
    if p == 0 or N == 1:
        return u
    hit = torch.rand(B, generator=generator) < p  # (B,)
    who = torch.randint(0, N, (B,), generator=generator)  # (B,)
    keep = ~(hit & (who == torch.arange(N)[:, None]))  # (N, B), drawn on the CPU like every training draw
    return u * keep.to(u.device)[:, None, :, None]  # (N, 7, B, K)


def fail_students(u: torch.Tensor, p: float, generator: torch.Generator = None) -> torch.Tensor:
    """Failout: each student's features (at every exit) zeroed for a sample with probability p, each
    student independently, so that the aggregate learns to answer from any surviving set; a sample
    never loses all: where every student was drawn, one of them, chosen uniformly, stays."""
    N, _, B, _ = u.shape
    if p == 0 or N == 1:
        return u
    lose = torch.rand(N, B, generator=generator) < p  # (N, B), drawn on the CPU like every training draw
    spare = torch.randint(0, N, (B,), generator=generator)  # (B,) drawn for every sample: the draws stay in step
    everyone = lose.all(0)  # (B,)
    lose[spare[everyone], everyone.nonzero().squeeze(1)] = False
    return u * (~lose).to(u.device)[:, None, :, None]  # (N, 7, B, K)


def joint_loss(u, maps, aggregate, y, z_t, q_t, exits, cfg: LossConfig) -> torch.Tensor:
    """L = sum_j w_j (KD_j + beta sum_i AT_ij) + mixed_weight KD(aggregate(u_(i, e_i))).

    u (N, 7, B, K); maps[i][j] (B, C, H, W); aggregate maps (N, B, K) to logits (B, K);
    z_t (B, K) teacher logits; q_t (N, B, h*w) teacher attention on each student's filters;
    exits (N,) the random exit of each student for the mixed term.
    """
    loss = 0
    for j, w in enumerate(cfg.exit_weights):
        attention = sum(at_loss(maps_i[j], q_t[i]) for i, maps_i in enumerate(maps)) if cfg.beta else 0
        loss = loss + w * (kd(aggregate(u[:, j]), y, z_t, cfg.tau, cfg.alpha) + cfg.beta * attention)
    if cfg.mixed_weight:
        z = aggregate(mixed_exit_features(u, exits))  # (B, K)
        loss = loss + cfg.mixed_weight * kd(z, y, z_t, cfg.tau, cfg.alpha)
    return loss
