"""The inference engine: a trained DistrEE model run under an exit policy, in three modes.

* dense: every stage runs on every sample and the policy's decisions are device masks; nothing
  reads back to the host, so the whole forward compiles with torch.compile(fullgraph=True).
* compacting: after each exit only the samples still running go on (index_select on the
  batch), so an exited sample costs nothing more.
* streaming: one sample at a time, as an edge device sees them; a student stops its stages at
  its exit.

All three compute the same scores with the same heads and give identical predictions.
"""
from dataclasses import dataclass

import torch

from distree.inference.evidence import bias_share, model_evidence, policy_exits
from distree.inference.step import DeviceStep
from distree.policies import NUM_EXITS, Policy, check_thresholds

MODES = ("dense", "compacting", "streaming")
LAST = NUM_EXITS - 1


def select_rows(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """h[keep] along the batch, keeping h's memory layout: index_select alone returns NCHW, and
    the channels_last convolutions that follow would pay a conversion of every activation."""
    if h.dim() == 4 and h.is_contiguous(memory_format=torch.channels_last):
        return h.permute(0, 2, 3, 1).index_select(0, keep).permute(0, 3, 1, 2)  # (b', C, H, W) channels_last
    return h.index_select(0, keep)


@dataclass
class Result:
    logits: torch.Tensor  # (B, K) aggregated
    exits: torch.Tensor  # (N, B) 0-based exit index of every student


class InferenceEngine:
    """Runs `model` (a DistrEEModel in eval mode) under `policy` with thresholds (5,) for exits 2..6."""

    def __init__(self, model, policy: Policy, thresholds=None):
        self.model, self.policy = model, policy
        t = policy.default_thresholds() if thresholds is None else thresholds
        self.thresholds = check_thresholds(t)  # (5,)
        self.bias_share = bias_share(model)  # (K,) on the model's device
        self.aggregate = torch.no_grad()(model.aggregate)
        self.steps = [DeviceStep(s, i, policy, self.thresholds, self.bias_share)
                      for i, s in enumerate(model.students)]

    def run(self, x: torch.Tensor, index: torch.Tensor, mode: str = "compacting") -> Result:
        """x (B, C, H, W) with sample ids index (B,) -> logits and exits, in `mode`."""
        with torch.inference_mode():  # cheaper per op than no_grad, which matters one sample at a time
            return getattr(self, mode)(x, index)

    def dense(self, x: torch.Tensor, index: torch.Tensor) -> Result:
        ev = model_evidence(self.model, x, index)
        exits = policy_exits(self.policy, ev, self.thresholds)  # (N, B)
        return Result(ev.logits_at(exits), exits)

    def compacting(self, x: torch.Tensor, index: torch.Tensor) -> Result:
        if self.policy.local:
            sent, exits = self._compacting_local(x, index)
            return Result(self.aggregate(sent), exits)
        return self._compacting_per_exit(x)

    def streaming(self, x: torch.Tensor, index: torch.Tensor) -> Result:
        results = [self._stream_one(x[b:b + 1], index[b:b + 1]) for b in range(x.shape[0])]
        return Result(torch.cat([r.logits for r in results]), torch.cat([r.exits for r in results], dim=1))

    def _compacting_local(self, x, index):
        """Each student runs alone; after each exit its finished samples leave the batch."""
        n, b = len(self.model.students), x.shape[0]
        sent, exits = None, torch.full((n, b), LAST, dtype=torch.long, device=x.device)
        for i, student in enumerate(self.model.students):
            h, ids, first, previous = x, torch.arange(b, device=x.device), None, None
            for j, (stage, head) in enumerate(zip(student.stages, student.heads)):
                h = stage(h)  # (b', C_j, H_j, W_j)
                if j < LAST and not self.policy.exits_early:
                    continue
                u, score, _ = head(h, first)  # (b', K), (b',)
                if sent is None:
                    sent = u.new_zeros(n, b, u.shape[1])  # (N, B, K)
                if j == LAST:
                    sent[i, ids] = u
                    break
                first = u if first is None else first
                if j >= 1:
                    stop = self.steps[i].stops(j, u, first, previous, score, index[ids])  # (b',)
                    done = stop.nonzero().squeeze(1)
                    if done.numel():
                        keep = (~stop).nonzero().squeeze(1)
                        sent[i, ids[done]], exits[i, ids[done]] = u[done], j
                        h, ids, first, u = select_rows(h, keep), ids[keep], first[keep], u[keep]
                    if ids.numel() == 0:
                        break
                previous = u
        return sent, exits

    def _compacting_per_exit(self, x):
        """All students advance stage by stage; the aggregator decides for all of them at once."""
        students = self.model.students
        n, b = len(students), x.shape[0]
        hs, ids = [x] * n, torch.arange(b, device=x.device)
        logits, exits = None, torch.full((n, b), LAST, dtype=torch.long, device=x.device)
        for j in range(NUM_EXITS):
            hs = [s.stages[j](h) for s, h in zip(students, hs)]  # N x (b', C_j, H_j, W_j)
            if j == 0:
                continue
            z = self.aggregate(torch.stack([s.heads[j](h)[0] for s, h in zip(students, hs)]))  # (b', K)
            if logits is None:
                logits = z.new_zeros(b, z.shape[1])  # (B, K)
            if j == LAST:
                logits[ids] = z
                break
            stop = self.policy.passes(self.policy.score(z), self.thresholds[j - 1])  # (b',)
            done = stop.nonzero().squeeze(1)
            if done.numel():
                keep = (~stop).nonzero().squeeze(1)
                logits[ids[done]], exits[:, ids[done]] = z[done], j
                hs, ids = [select_rows(h, keep) for h in hs], ids[keep]
            if ids.numel() == 0:
                break
        return Result(logits, exits)

    def _stream_one(self, x, index) -> Result:
        """One sample x (1, C, H, W): every student stops its stages at its own exit."""
        if not self.policy.local:
            return self._compacting_per_exit(x)
        sent, exits = [], []
        for step in self.steps:
            u, j = step.run_to_exit(x, index)
            sent.append(u)
            exits.append(j)
        return Result(self.aggregate(torch.stack(sent)), torch.tensor(exits, device=x.device).view(-1, 1))
