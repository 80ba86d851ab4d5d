"""The exit-policy interface that every policy (DistrEE's rule and the baselines) implements.

A policy turns what is known at an exit into a score and stops a sample at the first exit
j in 2..6 whose score passes the threshold T_j (a vector of 5 values); a sample that never
passes stops at exit 7. Local policies score one student's own evidence (each device decides
alone); per-exit policies score the aggregated logits, so every student sends at every stage
and all students stop together. Both give one score per student, exit and sample, so the same
`exits` turns scores into exit choices for tensors precomputed over a whole split (calibration)
and for a batch inside the inference engine.
"""
import math
import operator
from dataclasses import dataclass
from typing import ClassVar

import torch

from distree.errors import DistreeError
from distree.models.student import NUM_EXITS
NUM_THRESHOLDS = 5  # exits 2..6 decide; exit 1 never stops a sample, exit 7 always does

_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass
class LocalInputs:
    """What one device holds at one exit for a batch of B samples: all a local policy may use."""

    u: torch.Tensor  # (B, K) the student's class evidence at this exit
    first: torch.Tensor  # (B, K) its evidence at exit 1
    previous: torch.Tensor  # (B, K) its evidence at the exit before this one
    head_score: torch.Tensor  # (B,) the fused exit head's 1 / cos(u, first)
    bias_share: torch.Tensor  # (K,) the aggregator's bias divided by the number of students
    index: torch.Tensor  # (B,) int64 sample ids, for seeded policies
    student: int
    exit: int  # 0-based: 0 is exit 1, 6 is exit 7


class Policy:
    """A rule that stops a sample at the first exit whose score passes its threshold.

    `stop_when` is the comparison `score <op> threshold` that stops a sample; it also orders
    thresholds from `never` (stops nobody) to `always` (stops everybody), which calibration uses.
    """

    name: ClassVar[str]
    local: ClassVar[bool]
    stop_when: ClassVar[str] = ">"
    exits_early: ClassVar[bool] = True  # False only for last-exit, which skips exits 1..6

    def stops(self, inputs, thresholds: torch.Tensor, exit: int) -> torch.Tensor:
        """The stop mask (B,) at decision exit `exit` (0-based, 1..5) with thresholds (5,).

        inputs: LocalInputs for a local policy, aggregated logits (B, K) for a per-exit one.
        Every caller that decides one exit at a time (engine, devices, aggregator) goes through
        here; `exits` does the same comparison for scores precomputed over a split.
        """
        return self.passes(self.score(inputs), thresholds[exit - 1])

    def passes(self, score: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return _COMPARE[self.stop_when](score, threshold)

    @property
    def never(self) -> float:
        """The threshold that stops no sample (a NaN score never stops one either)."""
        return math.inf if self.stop_when in (">", ">=") else -math.inf

    @property
    def always(self) -> float:
        return -self.never

    def default_thresholds(self) -> torch.Tensor:
        return torch.full((NUM_THRESHOLDS,), self.never)  # (5,)

    def exits(self, scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        """Exit index (0-based) per student and sample from scores (N, 5, B) at exits 2..6."""
        thresholds = check_thresholds(thresholds).to(scores.device)
        passed = self.passes(scores, thresholds.view(1, -1, 1))  # (N, 5, B)
        last = torch.ones_like(passed[:, :1])  # (N, 1, B): exit 7 always stops
        stop = torch.cat([passed, last], dim=1)  # (N, 6, B) over exits 2..7
        rank = torch.arange(stop.shape[1], 0, -1, device=stop.device).view(1, -1, 1)  # 6..1: earlier ranks higher
        first = (stop * rank).amax(dim=1)  # (N, B) rank of the first exit that stops (far faster than argmax)
        return stop.shape[1] + 1 - first  # (N, B) 0-based: 1 is exit 2, 6 is exit 7


class LocalPolicy(Policy):
    """A policy a device applies alone, from its own evidence (`LocalInputs`)."""

    local = True

    def score(self, x: LocalInputs) -> torch.Tensor:  # (B,)
        raise NotImplementedError


class PerExitPolicy(Policy):
    """A policy on the aggregated logits at each exit: all students send every stage."""

    local = False

    def score(self, logits: torch.Tensor) -> torch.Tensor:  # (B, K) -> (B,)
        raise NotImplementedError


def check_thresholds(thresholds) -> torch.Tensor:
    """Thresholds as a float32 vector over exits 2..6, or a DistreeError saying what is wrong."""
    t = torch.as_tensor(thresholds, dtype=torch.float32)
    if t.dim() == 0:
        return t.expand(NUM_THRESHOLDS)
    if t.shape != (NUM_THRESHOLDS,):
        raise DistreeError(
            f"thresholds must be one value or {NUM_THRESHOLDS} values (exits 2..6), got shape {tuple(t.shape)}"
        )
    return t
