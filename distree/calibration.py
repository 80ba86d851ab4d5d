"""Threshold calibration on the validation split: per-exit vectors, and the paper's shared sweep.

Candidate thresholds per exit are quantiles of the policy's score there. For a trade-off weight
lambda, coordinate ascent maximises accuracy - lambda * (FLOPs / last-exit FLOPs): one exit at
a time takes its best candidate, the others held, until a pass changes nothing. Sweeping lambda
from small (accuracy first) to large (FLOPs first), each ascent starting where the previous one
ended, visits settings all along the trade-off; their Pareto front on val is the policy's
calibration curve. (a) picks its cheapest point within a given accuracy drop, (b) its most
accurate point within a FLOPs or simulated-latency budget. (A greedy search that loosened one
exit at a time by its FLOPs saved per accuracy lost got stuck: 7% saved where this finds 40%.)
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
    lambdas: int = 16  # trade-off weights swept, log-spaced ...
    lambda_min: float = 1e-4  # ... from this (accuracy points per FLOPs fraction: accuracy first) ...
    lambda_max: float = 1.0  # ... to this (FLOPs first)
    passes: int = 3  # coordinate-ascent passes over the exits per lambda, at most


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


def calibration_front(evaluate: PolicyEvaluator, config: CalibrationConfig = CalibrationConfig()) -> list[Outcome]:
    """The Pareto front (cheapest first) of every setting the lambda sweep visits on val."""
    grid = candidates(evaluate.policy, evaluate.scores, config.quantiles)
    step = [0] * NUM_THRESHOLDS  # indices into grid: start from last-exit
    visited = [evaluate(_pick(grid, step))]
    for lam in torch.logspace(torch.log10(torch.tensor(config.lambda_min)),
                              torch.log10(torch.tensor(config.lambda_max)), config.lambdas).tolist():
        for _ in range(config.passes):
            before = list(step)
            for j in range(NUM_THRESHOLDS):
                step[j], tried = _best_at(evaluate, grid, step, j, lam)
                visited += tried
            if step == before:
                break
    return pareto_front(visited)


def _best_at(evaluate: PolicyEvaluator, grid, step: list[int], j: int, lam: float) -> tuple[int, list[Outcome]]:
    """The candidate of exit j maximising accuracy - lam * FLOPs fraction, the others held."""
    tried = [evaluate(_pick(grid, step[:j] + [k] + step[j + 1:])) for k in range(len(grid[j]))]
    gain = [o.accuracy - lam * (1 - o.flops_reduction) for o in tried]
    return max(range(len(tried)), key=lambda k: (gain[k], -k)), tried


def _pick(grid: list[torch.Tensor], step: list[int]) -> torch.Tensor:
    return torch.stack([g[s] for g, s in zip(grid, step)])  # (5,)


def pareto_front(outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes no other beats on both FLOPs and accuracy, cheapest first."""
    front, best = [], -1.0
    for o in sorted(outcomes, key=lambda o: (o.flops, -o.accuracy)):
        if o.accuracy > best:
            front.append(o)
            best = o.accuracy
    return front


def least_flops(front: list[Outcome], reference_accuracy: float, max_drop: float) -> Outcome:
    """(a) The cheapest point whose accuracy is at most max_drop below the reference."""
    ok = [o for o in front if o.accuracy >= reference_accuracy - max_drop - 1e-12]
    if not ok:
        raise DistreeError(f"no setting reaches accuracy {reference_accuracy - max_drop:.4f} on validation")
    return min(ok, key=lambda o: (o.flops, -o.accuracy))


def best_within(front: list[Outcome], flops: float | None = None, latency_s: float | None = None) -> Outcome:
    """(b) The most accurate point within a FLOPs budget (mean per sample) and/or a simulated-latency
    budget, among the points of the accuracy-FLOPs front."""
    ok = [o for o in front if (flops is None or o.flops <= flops) and (latency_s is None or o.latency_s <= latency_s)]
    if not ok:
        cheapest = min(front, key=lambda o: o.flops)
        budget = ([] if flops is None else [f"{flops / 1e6:.3g} MFLOPs"]) + \
            ([] if latency_s is None else [f"{latency_s * 1e3:.3g} ms"])
        raise DistreeError(f"no setting meets the budget of {' and '.join(budget)} per sample; the cheapest needs "
                           f"{cheapest.flops / 1e6:.3g} MFLOPs and {cheapest.latency_s * 1e3:.3g} ms")
    return max(ok, key=lambda o: (o.accuracy, -o.flops))
