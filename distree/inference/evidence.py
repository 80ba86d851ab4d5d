"""Evidence: every student's class evidence at every exit over a split, computed once.

Whatever the policy and thresholds, a sample's prediction only depends on which exit each
student stops at, so running the model once per split and keeping u (N, 7, B, K) turns every
policy evaluation and calibration sweep into cheap tensor math.
"""
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from distree.data import forward_batch
from distree.policies import NUM_EXITS, LocalInputs, LocalPolicy, Policy

ANSWER_TABLE_LIMIT = 1 << 22  # the most answers (exit combinations x samples) `Evidence.answers` tabulates


@dataclass
class Evidence:
    """What N students produce on B samples at all 7 exits, and how the aggregator combines it."""

    u: torch.Tensor  # (N, 7, B, K) class evidence
    bias_share: torch.Tensor  # (K,) aggregator bias / N (zero in the projected space)
    index: torch.Tensor  # (B,) int64 sample ids within the split
    aggregate: Callable[[torch.Tensor], torch.Tensor]  # u_sel (N, B, K) -> logits (B, K)
    labels: torch.Tensor | None = None  # (B,)

    @property
    def bias(self) -> torch.Tensor:
        return self.bias_share * self.u.shape[0]  # (K,)

    def local_inputs(self, student: int, exit: int) -> LocalInputs:
        """What device `student` holds at `exit` (0-based, >= 1) for every sample."""
        u = self.u[student]  # (7, B, K)
        return LocalInputs(u=u[exit], first=u[0], previous=u[exit - 1], bias_share=self.bias_share, index=self.index, student=student, exit=exit)

    def logits_at(self, exits: torch.Tensor) -> torch.Tensor:
        """Aggregated logits (B, K) when student i stops at exits[i] (N, B), 0-based."""
        idx = exits.view(exits.shape[0], 1, -1, 1).expand(-1, 1, -1, self.u.shape[-1])  # (N, 1, B, K)
        return self.aggregate(self.u.gather(1, idx).squeeze(1))  # (N, B, K) -> (B, K)

    def answers(self, exits: torch.Tensor) -> torch.Tensor:
        """The aggregated answer (B,) when student i stops at exits[i] (N, B): `logits_at(exits).argmax(-1)`,
        bit for bit. Where the 7^N x B answers of every combination of exits fit in ANSWER_TABLE_LIMIT,
        they are computed once and each call is a lookup: calibration asks for tens of thousands of
        settings, and this made its sweeps 1.9x faster on the demo run."""
        table = self._answer_table
        if table is None:
            return self.logits_at(exits).argmax(-1)
        place = NUM_EXITS ** torch.arange(exits.shape[0] - 1, -1, -1, device=exits.device)  # (N,) 7^(N-1-i)
        row = (exits * place[:, None]).sum(0)  # (B,) the row of the combination each sample stopped at
        return table.gather(0, row[None]).squeeze(0)  # (B,)

    @cached_property
    def _answer_table(self) -> torch.Tensor | None:
        """Every combination's answers (7^N, B), rows in `itertools.product` order; None where too many."""
        n, _, b, _ = self.u.shape
        if NUM_EXITS ** n * b > ANSWER_TABLE_LIMIT:
            return None
        combos = torch.tensor(list(itertools.product(range(NUM_EXITS), repeat=n)), device=self.u.device)  # (7^N, N)
        return torch.stack([self.logits_at(c[:, None].expand(n, b)).argmax(-1) for c in combos])

    def exit_logits(self) -> torch.Tensor:
        """Aggregated logits (7, B, K) with every student at the same exit j."""
        return torch.stack([self.aggregate(self.u[:, j]) for j in range(NUM_EXITS)])

    def subset(self, keep: torch.Tensor) -> "Evidence":
        """The evidence of the samples keep (M,) only."""
        labels = None if self.labels is None else self.labels[keep]
        return Evidence(self.u[:, :, keep], self.bias_share, self.index[keep], self.aggregate, labels)


def run_exits(student, x: torch.Tensor) -> torch.Tensor:
    """All stages and heads of one student: u (7, B, K)."""
    walk = student.walk(x)
    return torch.stack([walk.head(score=False)[0] for _ in walk])  # (7, B, K)


def bias_share(model) -> torch.Tensor:
    """The aggregator bias each student adds to its own evidence; zero when a projection follows."""
    n = len(model.students)
    if getattr(model, "proj", None) is not None:
        return model.bias.new_zeros(model.students[0].heads[0].weight.shape[0]).detach()  # (D,)
    return model.bias.detach() / n  # (K,)


def model_evidence(model, x: torch.Tensor, index: torch.Tensor) -> Evidence:
    """Evidence of one batch x (B, C, H, W) with sample ids index (B,)."""
    u = torch.stack([run_exits(student, x) for student in model.students])  # (N, 7, B, K)
    return Evidence(u, bias_share(model), index, torch.no_grad()(model.aggregate))


@torch.inference_mode()
def collect_evidence(model, split, batch_size: int = forward_batch(), limit: int | None = None) -> Evidence:
    """Evidence of a split (a `distree.data.TensorImages`), its first `limit` samples if given."""
    n = len(split) if limit is None else min(limit, len(split))
    parts, labels = [], []
    for idx in torch.arange(n).split(batch_size):
        x, y = split.batch(idx)  # (b, C, 32, 32), (b,)
        parts.append(model_evidence(model, x.contiguous(memory_format=torch.channels_last), idx))
        labels.append(y)
    first = parts[0]
    return Evidence(u=torch.cat([p.u for p in parts], 2), bias_share=first.bias_share, index=torch.arange(n),
                    aggregate=first.aggregate, labels=torch.cat(labels))


def policy_scores(policy: Policy, ev: Evidence) -> torch.Tensor:
    """Every decision score (N, 5, B): student i's at exit j in 2..6 (per-exit policies repeat over i)."""
    n = ev.u.shape[0]
    decide = range(1, NUM_EXITS - 1)
    if isinstance(policy, LocalPolicy):
        return torch.stack([torch.stack([policy.score(ev.local_inputs(i, j)) for j in decide]) for i in range(n)])
    shared = torch.stack([policy.score(ev.aggregate(ev.u[:, j])) for j in decide])  # (5, B)
    return shared.unsqueeze(0).expand(n, -1, -1)  # (N, 5, B)


def policy_exits(policy: Policy, ev: Evidence, thresholds) -> torch.Tensor:
    """Exit index (N, B), 0-based, of every student on every sample under a policy."""
    return policy.exits(policy_scores(policy, ev), thresholds)
