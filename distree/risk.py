"""Risk-controlled calibration (Learn then Test): thresholds whose risk is at most epsilon with
probability at least 1 - delta, on data the calibration never saw.

Each candidate setting s is the hypothesis H_s: "risk(s) > epsilon". With k of n calibration
samples losing under s, p = P(Binom(n, epsilon) <= k) is a valid p-value for H_s when the samples
are i.i.d. draws from the deployment's distribution (exact binomial tail, for a 0/1 loss).
Testing the candidates in a fixed order, most conservative first, and stopping at the first
p > delta (fixed-sequence testing) rejects some true H_s with probability at most delta, so the
cheapest rejected setting is certified: P(risk > epsilon) <= delta (Angelopoulos et al., Learn
then Test; used for early exit by CALM and by Jazbec et al. 2024).

Two risks, both 0/1 per sample:
- accuracy: the answer is wrong where exit 7 (all students) is right. Its mean is an upper bound
  on the accuracy drop (harms minus helps), so certifying it certifies the drop.
- consistency: the answer differs from exit 7's. It needs no labels, so it can be calibrated on
  unlabelled deployment data.

The order must not depend on the calibration samples. It is the calibration front
(`calibration_front`) built on training-split evidence, which neither validation nor test
overlaps, with exit 7's answer as the label: so the order needs no labels either, and one order
per policy serves both risks (a harm is a change of answer). The students were trained on those
images, so the order fits validation less well than one built there would: that costs savings,
never validity. Because the order is fixed before any validation or test sample is seen,
repeating the procedure on a resplit of validation + test is only repeating the tests.
"""
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.stats import beta, binom

from distree.calibration import CalibrationConfig, calibration_front
from distree.errors import DistreeError
from distree.inference.evidence import Evidence
from distree.inference.outcome import PolicyEvaluator
from distree.costs import flops_per_sample

RISKS = ("accuracy", "consistency")
DEFAULT_EPSILON = {"accuracy": 0.005, "consistency": 0.01}  # the demo's: 0.5 points of accuracy; 1% of answers


@dataclass
class RiskSpec:
    """What to certify: risk(setting) <= epsilon with probability >= 1 - delta."""

    risk: str = "accuracy"
    epsilon: float = 0.005
    delta: float = 0.1

    def check(self) -> "RiskSpec":
        if self.risk not in RISKS:
            raise DistreeError(f"unknown risk {self.risk!r}; choose from {', '.join(RISKS)}")
        for name, v in (("epsilon", self.epsilon), ("delta", self.delta)):
            if not 0 < v < 1:
                raise DistreeError(f"{name} must be between 0 and 1 (exclusive), got {v:g}")
        return self


def binomial_cdf(n: int, p: float, top: int | None = None) -> torch.Tensor:
    """P(Binom(n, p) <= k) for k = 0..top (default n), (top + 1,) float64."""
    k = np.arange((n if top is None else top) + 1)  # (top+1,)
    return torch.from_numpy(binom.cdf(k, n, p))


def p_value(losses: int, n: int, epsilon: float) -> float:
    """The exact binomial p-value of H0: risk > epsilon, with `losses` of n samples losing."""
    return float(binom.cdf(losses, n, epsilon))


def upper_bound(losses: int, n: int, delta: float) -> float:
    """The smallest epsilon at which `losses` of n certify: the Clopper-Pearson upper bound at
    1 - delta, the epsilon where P(Binom(n, epsilon) <= losses) = delta, a quantile of Beta(losses + 1, n - losses)."""
    if losses >= n:
        return 1.0
    return float(beta.ppf(1 - delta, losses + 1, n - losses))


def max_losses(n: int, epsilon: float, delta: float) -> int:
    """The most losing samples of n that still certify epsilon at delta; -1 where none do."""
    return int((binomial_cdf(n, epsilon) <= delta).sum().item()) - 1


def samples_needed(epsilon: float, delta: float, rate: float, more_than: int = 0) -> int:
    """About how many samples (within 1%), more than `more_than`, certify epsilon for a setting whose
    observed loss rate is `rate`. (Near the boundary the losses' rounding lets some smaller counts
    pass too: a candidate that failed on n samples is asked for more than n.)"""
    passes = lambda n: max_losses(n, epsilon, delta) >= math.floor(rate * n)  # noqa: E731
    lo, hi = more_than, 2 * more_than + 1
    while not passes(hi):
        lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 100):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
    return hi


def fixed_sequence(p: torch.Tensor, delta: float) -> torch.Tensor:
    """Index of the last candidate rejected before the first p > delta, -1 if none: p (..., C)."""
    leading = (p <= delta).long().cumprod(-1)  # (..., C): 1 while every candidate so far is rejected
    return leading.sum(-1) - 1  # (...,)


def last_answer(ev: Evidence) -> torch.Tensor:
    """The aggregated answer (B,) with every student at exit 7."""
    return ev.aggregate(ev.u[:, -1]).argmax(-1)


def candidate_path(evaluator: PolicyEvaluator, config: CalibrationConfig, count: int) -> torch.Tensor:
    """Candidate thresholds (C, 5), most conservative first: the front built on `evaluator`'s (ordering)
    evidence with exit 7's answer as the label, at most `count` points, evenly spaced along it."""
    ev = evaluator.evidence
    ordering = PolicyEvaluator(evaluator.policy, replace(ev, labels=last_answer(ev)), evaluator.flops, evaluator.costs)
    front = calibration_front(ordering, config)[::-1]  # most accurate (conservative) first
    keep = torch.linspace(0, len(front) - 1, min(count, len(front))).round().long().unique()
    return torch.stack([front[i].thresholds for i in keep.tolist()])  # (C, 5)


@dataclass
class PathLosses:
    """Per candidate and sample of a split: the 0/1 loss and the FLOPs."""

    loss: torch.Tensor  # (C, B) bool
    flops: torch.Tensor  # (C, B) float64


def path_losses(evaluator: PolicyEvaluator, path: torch.Tensor, risk: str) -> PathLosses:
    """Each candidate's loss and FLOPs on every sample of the evaluator's split."""
    ev = evaluator.evidence
    if risk == "accuracy" and ev.labels is None:
        raise DistreeError("the accuracy risk needs labels; use --risk consistency for unlabelled data")
    last = last_answer(ev)  # (B,)
    loss, flops = [], []
    for t in path:
        exits = evaluator.exits(t)  # (N, B)
        answer = ev.answers(exits)  # (B,)
        loss.append(answer != last if risk == "consistency" else (answer != ev.labels) & (last == ev.labels))
        flops.append(flops_per_sample(evaluator.flops, exits, evaluator.policy))
    return PathLosses(torch.stack(loss), torch.stack(flops))  # (C, B), (C, B)


@dataclass
class Certificate:
    """The fixed-sequence test of one policy's path on the calibration samples."""

    index: int  # certified candidate, -1 where none is
    thresholds: torch.Tensor | None  # (5,) the certified setting
    n: int  # calibration samples
    losses: int  # of them, losing under the certified setting
    p_value: float | None
    candidates: int
    next_epsilon: float | None  # the smallest epsilon that would certify one more candidate; None past the last
    next_samples: int | None  # about how many calibration samples would certify it at its observed loss rate;
    # None past the last candidate or where that rate is epsilon or more (no number of samples would)


def next_candidate_samples(losses: int, n: int, spec: RiskSpec) -> int | None:
    """About how many samples, in all, would certify a candidate that loses on `losses` of n, if its loss
    rate stayed what it is: None where that rate is not below epsilon."""
    rate = losses / n
    return samples_needed(spec.epsilon, spec.delta, rate, more_than=n) if rate < spec.epsilon else None


def certify(path: torch.Tensor, calib: PathLosses, spec: RiskSpec) -> Certificate:
    """The cheapest candidate of `path` (C, 5) certified on the calibration losses."""
    n = calib.loss.shape[1]
    k = calib.loss.sum(1)  # (C,)
    p = binomial_cdf(n, spec.epsilon)[k]  # (C,)
    i = int(fixed_sequence(p, spec.delta))
    after = i + 1
    next_eps, next_n = None, None
    if after < len(k):
        next_eps, next_n = upper_bound(int(k[after]), n, spec.delta), next_candidate_samples(int(k[after]), n, spec)
    if i < 0:
        return Certificate(-1, None, n, 0, None, len(k), next_eps, next_n)
    return Certificate(i, path[i], n, int(k[i]), p[i].item(), len(k), next_eps, next_n)


def resplit_check(pool: PathLosses, spec: RiskSpec, last_flops: float, resplits: int, seed: int = 0,
                  epsilons: list[float] = ()) -> dict:
    """Repeats the certification on `resplits` random halves of the pooled samples (the order is fixed,
    see the module docstring) and measures the certified settings' risk and FLOPs on the other half.

    Returns for spec.epsilon, and for each of `epsilons`: how often the held-out risk exceeded
    epsilon (a half certifying nothing never exceeds), how often the certified setting's risk over
    the whole pool did, how often something was certified, and the mean held-out FLOPs saved (0
    where nothing was certified).

    The two exceedances answer different questions. The halves are drawn from the pool, so the
    pool is their population, and its risk is the one the guarantee bounds: the pooled fraction is
    the guarantee's own event, at most delta for a valid procedure (the binomial p-value stays
    valid for a half drawn without replacement: its losses vary less than binomially). The held-out
    half's risk is an estimate, and a biased one here: the two halves' losses add up to the pool's,
    so a setting certified on a lucky calibration half (few losses) shows its missing losses in the
    held-out half, and one whose pooled risk is just below epsilon exceeds it there whenever it is
    certified (docs/method.md, "Checking the guarantee").
    """
    c, m = pool.loss.shape
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(m, generator=g) for _ in range(resplits)])  # (R, M)
    calib = torch.zeros(resplits, m, dtype=torch.float64).scatter_(1, order[:, :m // 2], 1.0)  # (R, M) 1 = calib
    loss = pool.loss.double().T  # (M, C)
    k = (calib @ loss).round().long()  # (R, C) losses on each calibration half
    n_cal, n_held = m // 2, m - m // 2
    held_risk = ((1 - calib) @ loss) / n_held  # (R, C)
    pool_risk = loss.mean(0)  # (C,)
    held_saved = 1 - ((1 - calib) @ pool.flops.T) / n_held / last_flops  # (R, C)
    out = {}
    for eps in [spec.epsilon, *epsilons]:
        i = fixed_sequence(binomial_cdf(n_cal, eps)[k], spec.delta)  # (R,)
        got = i >= 0
        pick = i.clamp(min=0).unsqueeze(1)  # (R, 1)
        exceed = got & (held_risk.gather(1, pick).squeeze(1) > eps)  # (R,)
        pool_exceed = got & (pool_risk[pick.squeeze(1)] > eps)  # (R,)
        saved = torch.where(got, held_saved.gather(1, pick).squeeze(1), torch.zeros(resplits, dtype=torch.float64))
        out[eps] = {"epsilon": eps, "exceed_fraction": exceed.double().mean().item(),
                    "pool_exceed_fraction": pool_exceed.double().mean().item(),
                    "certified_fraction": got.double().mean().item(), "mean_flops_reduction": saved.mean().item()}
    return {"resplits": resplits, "calibration_samples": n_cal, "held_out_samples": n_held,
            "at_epsilon": out[spec.epsilon], "curve": [out[e] for e in epsilons]}
