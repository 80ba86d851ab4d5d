"""Threshold calibration on the validation split: per-exit vectors, and the paper's shared sweep.

Candidate thresholds per exit are quantiles of the policy's score there. A greedy search starts
from thresholds that stop nobody (last-exit) and repeatedly makes the one exit more permissive
that saves the most FLOPs per accuracy point lost, until every exit stops everybody. The points
it passes form the policy's accuracy-FLOPs curve; (a) picks the cheapest point within a given
accuracy drop, (b) the most accurate point within a FLOPs or simulated-latency budget.
"""
from dataclasses import dataclass

import torch

from distree.errors import DistreeError
from distree.inference.outcome import Outcome, PolicyEvaluator
from distree.policies import NUM_THRESHOLDS, Policy

PAPER_SWEEP = (1.0, 1.08, 1.12, 1.16, 1.20, 1.24, 1.28)  # the paper's shared T for DistrEE's rule


@dataclass
class CalibrationConfig:
    quantiles: int = 24  # candidate thresholds per exit, from the score's quantiles on val
    max_drop: float = 0.005  # (a): accuracy at most this far below last-exit (0.005 = 0.5 points)


def candidates(policy: Policy, scores: torch.Tensor, count: int) -> list[torch.Tensor]:
    """Per exit 2..6, thresholds (M,) ordered from stopping nobody to stopping everybody."""
    levels = torch.linspace(0, 1, count + 1, dtype=torch.float64)
    out = []
    for j in range(NUM_THRESHOLDS):
        s = scores[:, j].flatten().double()
        s = s[s.isfinite()]
        q = torch.quantile(s, levels).unique() if s.numel() else s.new_zeros(0)  # ascending
        if policy.never > 0:
            q = q.flip(0)  # stop when score > t: lowering t lets more through
        ends = torch.tensor([policy.never]), torch.tensor([policy.always])
        out.append(torch.cat([ends[0], q.float(), ends[1]]))
    return out


def greedy_path(evaluate: PolicyEvaluator, config: CalibrationConfig = CalibrationConfig()) -> list[Outcome]:
    """The greedy search's points, from last-exit to everybody stopping at exit 2."""
    grid = candidates(evaluate.policy, evaluate.scores, config.quantiles)
    step = [0] * NUM_THRESHOLDS
    current = evaluate(_pick(grid, step))
    path = [current]
    eps = 0.1 / evaluate.evidence.u.shape[2]  # a tenth of one sample's accuracy
    while any(s + 1 < len(g) for s, g in zip(step, grid)):
        moves = []
        for j in range(NUM_THRESHOLDS):
            if step[j] + 1 < len(grid[j]):
                trial = step[:j] + [step[j] + 1] + step[j + 1:]
                moves.append((trial, evaluate(_pick(grid, trial))))
        step, current = max(moves, key=lambda m: _gain(current, m[1], eps))
        path.append(current)
    return path


def _pick(grid: list[torch.Tensor], step: list[int]) -> torch.Tensor:
    return torch.stack([g[s] for g, s in zip(grid, step)])  # (5,)


def _gain(current: Outcome, new: Outcome, eps: float) -> float:
    """FLOPs saved per accuracy lost by a move (a move that loses nothing is worth the most)."""
    return (current.flops - new.flops) / max(current.accuracy - new.accuracy, eps)


def least_flops(path: list[Outcome], reference_accuracy: float, max_drop: float) -> Outcome:
    """(a) The cheapest point whose accuracy is at most max_drop below the reference."""
    ok = [o for o in path if o.accuracy >= reference_accuracy - max_drop - 1e-12]
    if not ok:
        raise DistreeError(f"no setting reaches accuracy {reference_accuracy - max_drop:.4f} on validation")
    return min(ok, key=lambda o: (o.flops, -o.accuracy))


def best_within(path: list[Outcome], flops: float | None = None, latency_s: float | None = None) -> Outcome:
    """(b) The most accurate point within a FLOPs budget (mean per sample) and/or a latency budget."""
    ok = [o for o in path if (flops is None or o.flops <= flops) and (latency_s is None or o.latency_s <= latency_s)]
    if not ok:
        cheapest = min(path, key=lambda o: o.flops)
        raise DistreeError(
            f"no setting meets the budget (FLOPs <= {flops}, latency <= {latency_s} s); the cheapest setting needs "
            f"{cheapest.flops:.4g} FLOPs and {cheapest.latency_s * 1e3:.2f} ms")
    return max(ok, key=lambda o: (o.accuracy, -o.flops))


def shared_sweep(evaluate: PolicyEvaluator, values=PAPER_SWEEP) -> list[Outcome]:
    """One shared threshold for every exit, at each of `values`."""
    return [evaluate(torch.full((NUM_THRESHOLDS,), float(v))) for v in values]
