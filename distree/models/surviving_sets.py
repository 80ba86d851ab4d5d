"""The aggregator for every surviving set of students: how to answer when only some devices do.

The healthy aggregator sums every student's contribution and adds one bias. With a student
missing, that sum lacks a term it was trained to have, and the answer suffers far more than
the lost evidence warrants. So each non-empty proper subset S of the students gets its own
combination, z_S = sum over i in S of scale_S[i] * c_i + bias_S, where c_i is what student i
adds to the healthy logits (its evidence in the class space; its columns of the projection
times its evidence in the projected space). The scales and the bias are fitted by cross-entropy
on the training split's evidence, with every surviving student at the same exit, exits 2 to 7
pooled, so one table serves whatever exit a device stops at and validation stays free for
certification. The full set is the model's own aggregator, unchanged.
"""
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from distree.errors import DistreeError

FIRST_FITTED_EXIT = 1  # 0-based: exit 1 never answers alone under any policy, so the fit leaves it out


@dataclass
class SetAggregator:
    """The combination used when only `members` answer."""

    members: tuple[int, ...]  # sorted student indices
    scale: torch.Tensor  # (|S|,) one per member, in the order of members
    bias: torch.Tensor  # (K,)

    def logits(self, contributions: torch.Tensor) -> torch.Tensor:
        """z (B, K) from every student's contribution (N, B, K); the rows of non-members are ignored."""
        c = contributions[list(self.members)]  # (|S|, B, K)
        return (self.scale.to(c.dtype)[:, None, None] * c).sum(0) + self.bias.to(c.dtype)

    def to_json(self) -> dict:
        return {"members": list(self.members), "scale": self.scale.tolist(), "bias": self.bias.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "SetAggregator":
        return cls(tuple(d["members"]), torch.tensor(d["scale"], dtype=torch.float32),
                   torch.tensor(d["bias"], dtype=torch.float32))


@dataclass
class SurvivingSets:
    """A SetAggregator for every non-empty proper subset of num_students students."""

    num_students: int
    sets: dict[tuple[int, ...], SetAggregator]

    def __post_init__(self):
        want = set(proper_subsets(self.num_students))
        if set(self.sets) != want:
            raise DistreeError(f"a surviving-set table for {self.num_students} students needs {len(want)} sets "
                               f"(every non-empty proper subset), got {len(self.sets)}")

    def to_json(self) -> dict:
        return {"num_students": self.num_students, "sets": [a.to_json() for a in self.sets.values()]}

    @classmethod
    def from_json(cls, d: dict, num_students: int) -> "SurvivingSets":
        """The table in d, refused unless it is for num_students students (the run's N)."""
        if d.get("num_students") != num_students:
            raise DistreeError(f"the surviving-set table is for {d.get('num_students')} students, "
                               f"but the run has {num_students}")
        return cls(num_students, {tuple(s["members"]): SetAggregator.from_json(s) for s in d["sets"]})


def proper_subsets(n: int) -> list[tuple[int, ...]]:
    """Every non-empty proper subset of range(n), smallest first: 2^n - 2 of them."""
    return [s for k in range(1, n) for s in itertools.combinations(range(n), k)]


def fit_set(contributions: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor, max_iter: int = 100):
    """Scale (S,) and bias (K,) minimising the cross-entropy of sum_i scale_i c_i + bias over
    contributions (S, M, K) with labels (M,); started from the healthy aggregator (1, bias)."""
    with torch.inference_mode(False), torch.enable_grad():  # evaluation may run it under either
        c = contributions.double()  # a copy autograd may save
        scale = torch.ones(c.shape[0], dtype=torch.float64, requires_grad=True)
        b = bias.detach().double().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([scale, b], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy((scale[:, None, None] * c).sum(0) + b, labels)
            loss.backward()
            return loss

        opt.step(closure)
    return scale.detach().float(), b.detach().float()


def fit_surviving_sets(model, u: torch.Tensor, labels: torch.Tensor) -> SurvivingSets:
    """Every proper subset's aggregator, fitted on `model`'s evidence u (N, 7, M, K) of M training
    samples with labels (M,)."""
    n, exits = u.shape[0], u.shape[1]
    with torch.no_grad():
        c = torch.stack([model.contributions(u[:, j]) for j in range(FIRST_FITTED_EXIT, exits)], 1)  # (N, 6, M, K)
    pooled = c.flatten(1, 2)  # (N, 6M, K): every surviving student at the same exit, exits 2..7
    pooled_labels = labels.repeat(exits - FIRST_FITTED_EXIT)  # (6M,)
    sets = {}
    for members in proper_subsets(n):
        scale, bias = fit_set(pooled[list(members)], pooled_labels, model.bias)
        sets[members] = SetAggregator(members, scale, bias)
    return SurvivingSets(n, sets)


def aggregator_for(model, table: SurvivingSets | None, members) -> Callable[[torch.Tensor], torch.Tensor]:
    """The aggregate u_sel (N, B, D) -> logits (B, K) used when only `members` answer: the model's own
    for the full set; the table's for a proper subset; without a table, the model's own with the
    missing rows zeroed (what runs evaluated before surviving sets did)."""
    members, n = tuple(sorted(members)), len(model.students)
    if not members:
        raise DistreeError("no student answered: a surviving set is never empty")
    if len(members) == n:
        return model.aggregate
    if table is None:
        keep = torch.zeros(n, 1, 1)
        keep[list(members)] = 1.0
        return lambda u: model.aggregate(u * keep.to(u))
    chosen = table.sets[members]
    return lambda u: chosen.logits(model.contributions(u))
