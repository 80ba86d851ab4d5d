"""Per-device settings certified together: what the adaptive runtime may combine.

The runtime moves each device along the same path of settings on its own, so a session runs
combinations: device i at path[j_i]. A path certified one setting at a time (`distree.risk`)
says nothing of a combination, say a slow device at a cheap setting while a fast one stays
conservative. So every combination of a path of C settings for N devices is tested at once, on
the calibration samples: H_c, "the consistency risk of combination c exceeds epsilon", rejected
when its exact binomial p-value is at most delta / C^N (Bonferroni), so that with probability at
least 1 - delta every combination called certified has risk at most epsilon, however the
runtime moves among them.

A surviving set S of devices (the others lost) answers by its own aggregator, so its grid is
tested anew on that set's answers against its own exit-7 answer, over the same path, with one
dimension per member only (Bonferroni over C^|S| combinations): after a loss the runtime moves
the devices that are left only among those.

The path is the certification's candidate order (fixed on training-split evidence, most
conservative first), cut where no single device moving alone stays within epsilon on the
training evidence any more (further settings could only fail), and thinned to `steps` settings
evenly spaced, both ends kept. Neither choice looks at the calibration samples.
"""
import itertools
from dataclasses import dataclass

import torch

from distree.costs import student_flops
from distree.inference.evidence import Evidence
from distree.inference.outcome import PolicyEvaluator
from distree.policies import NUM_EXITS, check_thresholds
from distree.risk import binomial_cdf, last_answer, upper_bound
from distree.run_dir import jsonable_thresholds


@dataclass
class SettingCosts:
    """What each device spends at each setting of a path, FLOPs per sample on calibration, at any
    percentile: `share` (C, N, 7) of the samples device i leaves at each exit under setting j and
    `flops` (N, 7) that device i spends to reach and decide at each exit. A device's FLOPs take one
    of 7 values, so the pair is its whole distribution: the P-th percentile at a setting is the
    FLOPs of the first exit by which at least P% of the samples have left (no interpolation).

    Grids stored before the histogram kept only the 95th percentile (`fixed` (C, N)); theirs is
    the cost at every percentile."""

    share: torch.Tensor | None  # (C, N, 7)
    flops: torch.Tensor | None  # (N, 7), nondecreasing along the exits
    fixed: torch.Tensor | None = None  # (C, N)

    def at(self, percentile: float) -> torch.Tensor:
        """(C, N): device i's P-th percentile of FLOPs per sample at setting j."""
        if self.share is None:
            return self.fixed
        left = self.share.cumsum(-1)  # (C, N, 7): share of samples gone by each exit
        first = (left < percentile / 100 - 1e-9).sum(-1).clamp_max(left.shape[-1] - 1)  # (C, N)
        return self.flops.unsqueeze(0).expand(len(first), -1, -1).gather(2, first.unsqueeze(-1)).squeeze(-1)

    def to_json(self) -> dict:
        if self.share is None:
            return {"cost": self.fixed.tolist()}
        return {"exit_share": self.share.tolist(), "exit_flops": self.flops.tolist()}

    @staticmethod
    def from_json(entry: dict, settings: int) -> "SettingCosts":
        if "exit_share" not in entry:  # stored before the histogram: the 95th percentile alone
            return SettingCosts(None, None, torch.tensor(entry["cost"], dtype=torch.float64).view(settings, -1))
        share = torch.tensor(entry["exit_share"], dtype=torch.float64)
        return SettingCosts(share.view(settings, -1, share.shape[-1]), torch.tensor(entry["exit_flops"],
                                                                                    dtype=torch.float64))


@dataclass
class GridCertificate:
    """Every combination of per-device settings of `path`, tested at once."""

    path: torch.Tensor  # (C, 5) conservative first
    n: int  # calibration samples
    losses: torch.Tensor  # (C,) * N int64: calibration samples whose answer differs from exit 7's
    certified: torch.Tensor  # (C,) * N bool
    epsilon: float
    delta: float
    costs: SettingCosts  # what device i spends per sample at setting j
    members: tuple[int, ...] | None = None  # the devices of a surviving set's grid, one dimension each; None: all

    def key(self, indices) -> tuple:
        """The grid's index of the combination `indices` (one setting per device of the session)."""
        return tuple(indices) if self.members is None else tuple(indices[i] for i in self.members)

    def allows(self, indices) -> bool:
        """Whether the combination `indices` (one setting per device of the session) is certified."""
        return bool(self.certified[self.key(indices)])

    def bound(self, indices, extra_losses: int = 0, extra_n: int = 0) -> float:
        """Upper confidence bound (1 - delta) on the risk of combination `indices` (one setting per
        device of the session), its calibration samples pooled with `extra_n` more of which
        `extra_losses` lost, at the certificate's Bonferroni level: a certified combination's own
        bound is at most epsilon."""
        return upper_bound(int(self.losses[self.key(indices)]) + extra_losses, self.n + extra_n,
                           self.delta / self.losses.numel())

    def to_json(self) -> dict:
        out = {"path": [jsonable_thresholds(t) for t in self.path], "devices": self.losses.dim(), "n": self.n,
               "epsilon": self.epsilon, "delta": self.delta, "losses": self.losses.flatten().tolist(),
               "certified": self.certified.flatten().tolist(), **self.costs.to_json()}
        return out if self.members is None else {**out, "members": list(self.members)}

    @staticmethod
    def from_json(entry: dict) -> "GridCertificate":
        """The certificate `to_json` wrote; a KeyError, ValueError or TypeError where entry is not one."""
        path = torch.stack([check_thresholds([float(v) for v in t]) for t in entry["path"]])  # (C, 5)
        shape = (len(path),) * int(entry["devices"])
        return GridCertificate(path, int(entry["n"]), torch.tensor(entry["losses"], dtype=torch.long).view(shape),
                               torch.tensor(entry["certified"], dtype=torch.bool).view(shape),
                               float(entry["epsilon"]), float(entry["delta"]),
                               SettingCosts.from_json(entry, len(path)),
                               None if entry.get("members") is None else tuple(int(i) for i in entry["members"]))


def setting_exits(evaluator: PolicyEvaluator, path: torch.Tensor) -> torch.Tensor:
    """Every device's exit at every setting of path (C, 5): (C, N, B), 0-based."""
    return torch.stack([evaluator.exits(t) for t in path])


def combination_losses(evaluator: PolicyEvaluator, exits: torch.Tensor, members: tuple[int, ...] = None) -> torch.Tensor:
    """Per combination of the settings of `members` (None: every device), (C,) * |members|, the
    samples whose answer differs from exit 7's; exits (C, N, B) from `setting_exits`. The other
    devices sit at the first setting (a surviving set's aggregator never reads them)."""
    ev = evaluator.evidence
    c, n = exits.shape[:2]
    members = tuple(range(n)) if members is None else members
    last = last_answer(ev)  # (B,)
    out = torch.zeros((c,) * len(members), dtype=torch.long)
    for index in itertools.product(range(c), repeat=len(members)):
        e = exits[0].clone()  # (N, B)
        for i, j in zip(members, index):
            e[i] = exits[j, i]
        out[index] = int((ev.answers(e) != last).sum())
    return out


def alone_risks(evaluator: PolicyEvaluator, exits: torch.Tensor) -> torch.Tensor:
    """Per setting (C,), the largest consistency risk of one device at it, the others at the first
    setting; exits (C, N, B) from `setting_exits`."""
    ev = evaluator.evidence
    last = last_answer(ev)  # (B,)
    risks = torch.zeros(len(exits), dtype=torch.float64)
    for j in range(len(exits)):
        for i in range(exits.shape[1]):
            e = exits[0].clone()  # (N, B)
            e[i] = exits[j, i]
            risks[j] = max(risks[j], (ev.answers(e) != last).double().mean())
    return risks


def device_path(ordering: PolicyEvaluator, candidates: torch.Tensor, epsilon: float, steps: int) -> torch.Tensor:
    """The candidates (C, 5) up to the last one some device alone keeps within epsilon on the
    ordering (training) evidence, at most `steps` of them, evenly spaced, both ends kept."""
    within = (alone_risks(ordering, setting_exits(ordering, candidates)) <= epsilon).nonzero()
    last = int(within.max()) if len(within) else 0
    keep = torch.linspace(0, last, min(steps, last + 1)).round().long().unique()
    return candidates[keep]  # (C', 5)


def certify_grid(calibration: PolicyEvaluator, path: torch.Tensor, epsilon: float, delta: float,
                 members: tuple[int, ...] = None) -> GridCertificate:
    """Every combination of per-device settings of `path` tested at once on the calibration evidence;
    for a surviving set, its `members` only, with `calibration` the set's evaluator
    (`distree.inference.degraded.set_evaluator`)."""
    exits = setting_exits(calibration, path)  # (C, N, B)
    losses = combination_losses(calibration, exits, members)  # (C,) * |members|
    n = calibration.evidence.u.shape[2]
    p = binomial_cdf(n, epsilon)[losses]  # (C,) * |members|: P(Binom(n, epsilon) <= losses)
    return GridCertificate(path, n, losses, p <= delta / losses.numel(), epsilon, delta,
                           device_costs(calibration, exits), members)


def policy_grid(calibration: PolicyEvaluator, ordering: Evidence, candidates: torch.Tensor, epsilon: float,
                delta: float, steps: int) -> GridCertificate:
    """A policy's grid as `distree evaluate` stores it: its candidates (C, 5) cut and thinned on the
    ordering (training) evidence, every combination tested on the calibration evidence."""
    order = PolicyEvaluator(calibration.policy, ordering, calibration.flops, calibration.costs)
    return certify_grid(calibration, device_path(order, candidates, epsilon, steps), epsilon, delta)


def device_costs(evaluator: PolicyEvaluator, exits: torch.Tensor) -> SettingCosts:
    """What device i spends at setting j (its own exits only: a device's cost does not depend on the
    others' settings), from exits (C, N, B)."""
    n = exits.shape[1]
    every_exit = torch.arange(NUM_EXITS).expand(n, -1)  # (N, 7)
    flops = student_flops(evaluator.flops, every_exit, evaluator.policy).double()  # (N, 7)
    counts = torch.nn.functional.one_hot(exits, NUM_EXITS).sum(2)  # (C, N, 7)
    return SettingCosts(counts.double() / exits.shape[2], flops)
