"""Random baseline: each student stops at a seeded random exit, whatever the sample."""
import torch

from distree.policies.base import NUM_EXITS, LocalInputs, LocalPolicy

_MASK_24 = (1 << 24) - 1


def uniform_hash(index: torch.Tensor, student: int, exit: int, seed: int) -> torch.Tensor:
    """A uniform number in [0, 1) per sample id (B,), fixed by (seed, student, exit, id).

    Hashing the sample id rather than drawing from a generator gives every sample the same
    number whatever batch it arrives in, so the engine's three modes and the precomputed
    evaluation agree. int64 products wrap, as a multiplicative hash wants.
    """
    key = (seed * 1_000_003 + student * 7_919 + exit) * 1_442_695_040_888_963_407 % (1 << 62)
    h = index.long() * 6_364_136_223_846_793_005 + key  # (B,)
    h = h ^ ((h >> 29) & ((1 << 35) - 1))  # logical shift on a signed int64
    h = h * 3_037_000_493
    return ((h >> 32) & _MASK_24).float() / (1 << 24)  # (B,)


class RandomPolicy(LocalPolicy):
    """Stop at exit j (2..6) with probability T_j, drawn independently per student and sample.

    `uniform_thresholds` spreads exits evenly over 2..7; `matching_thresholds` reproduces a
    given exit histogram, to compare with another policy at the same average cost.
    """

    name = "random"
    stop_when = "<"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, x: LocalInputs):
        return uniform_hash(x.index, x.student, x.exit, self.seed)  # (B,)


def uniform_thresholds() -> torch.Tensor:
    """Stop probabilities (5,) under which exits 2..7 are equally likely: 1/6, 1/5, ..., 1/2."""
    remaining = torch.arange(NUM_EXITS - 1, 1, -1, dtype=torch.float32)  # 6, 5, 4, 3, 2
    return 1.0 / remaining


def matching_thresholds(histogram: torch.Tensor) -> torch.Tensor:
    """Stop probabilities (5,) that reproduce an exit histogram (7,) over exits 1..7.

    Mass at exit 1 (never used by any policy) is moved to exit 2.
    """
    h = histogram.double().clone()  # (7,)
    h[1] += h[0]
    tail = h.flip(0).cumsum(0).flip(0)  # (7,) mass at exit j or later
    p = torch.where(tail > 0, h / tail.clamp_min(1e-300), torch.zeros_like(h))
    return p[1:6].float()  # (5,)
