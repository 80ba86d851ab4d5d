"""The inference engine: a trained DistrEE model run under an exit policy, in three modes.

* dense: every stage runs on every sample and the policy's decisions are device masks; nothing
  reads back to the host, so the whole forward compiles with torch.compile(fullgraph=True).
* compacting: after each exit only the samples still running go on (index_select on the
  batch), so an exited sample costs nothing more.
* streaming: one sample at a time, as an edge device sees them; a student stops its stages at
  its exit.

All three compute the same scores with the same heads and give identical predictions.

With `members`, only those students run (the others' devices are lost) and the answer comes
from that surviving set's aggregator (`distree.models.surviving_sets`); a missing student's
exit is -1 and its evidence zeros, as the runtime records them.
"""
from dataclasses import dataclass

import torch

from distree.inference.evidence import bias_share, model_evidence, policy_exits
from distree.inference.step import DeviceStep
from distree.models.surviving_sets import SurvivingSets, aggregator_for
from distree.policies import LAST_EXIT, Policy, check_thresholds

MODES = ("dense", "compacting", "streaming")


@dataclass
class Result:
    logits: torch.Tensor  # (B, K) aggregated
    exits: torch.Tensor  # (N, B) 0-based exit index of every student
    sent: torch.Tensor | None = None  # (N, B, K) the evidence each student sent, under a local policy (else None)


class InferenceEngine:
    """Runs `model` (a DistrEEModel in eval mode) under `policy` with thresholds (5,) for exits 2..6;
    with `members`, only those students, answered by the surviving set's aggregator in `surviving`."""

    def __init__(self, model, policy: Policy, thresholds=None, members=None, surviving: SurvivingSets = None):
        self.model, self.policy = model, policy
        t = policy.default_thresholds() if thresholds is None else thresholds
        self.thresholds = check_thresholds(t)  # (5,)
        self.bias_share = bias_share(model)  # (K,) on the model's device
        n = len(model.students)
        self.members = tuple(range(n)) if members is None else tuple(sorted(members))
        self.aggregate = torch.no_grad()(aggregator_for(model, surviving, self.members))
        self.steps = [DeviceStep(s, i, policy, self.thresholds, self.bias_share)
                      for i, s in enumerate(model.students)]

    def run(self, x: torch.Tensor, index: torch.Tensor, mode: str = "compacting") -> Result:
        """x (B, C, H, W) with sample ids index (B,) -> logits and exits, in `mode`."""
        with torch.inference_mode():  # cheaper per op than no_grad, which matters one sample at a time
            return getattr(self, mode)(x, index)

    def dense(self, x: torch.Tensor, index: torch.Tensor) -> Result:
        if len(self.members) < len(self.steps):
            raise ValueError("dense mode runs every student; a surviving set runs compacting or streaming")
        ev = model_evidence(self.model, x, index)
        exits = policy_exits(self.policy, ev, self.thresholds)  # (N, B)
        return Result(ev.logits_at(exits), exits)

    def compacting(self, x: torch.Tensor, index: torch.Tensor) -> Result:
        if self.policy.local:
            sent, exits = self._compacting_local(x, index)
            return Result(self.aggregate(sent), exits, sent)
        return self._compacting_per_exit(x)

    def streaming(self, x: torch.Tensor, index: torch.Tensor) -> Result:
        results = [self._stream_one(x[b:b + 1], index[b:b + 1]) for b in range(x.shape[0])]
        sent = torch.cat([r.sent for r in results], dim=1) if self.policy.local else None  # (N, B, K)
        return Result(torch.cat([r.logits for r in results]), torch.cat([r.exits for r in results], dim=1), sent)

    def _compacting_local(self, x, index):
        """Each student runs alone; after each exit its finished samples leave the batch."""
        runs = {i: self.steps[i].run(x, index) for i in self.members}  # {i: ((B, K), (B,))}
        if len(runs) == len(self.steps):
            return torch.stack([u for u, _ in runs.values()]), torch.stack([e for _, e in runs.values()])  # (N, B, K), (N, B)
        u, e = next(iter(runs.values()))
        missing = (torch.zeros_like(u), torch.full_like(e, -1))
        runs = [runs.get(i, missing) for i in range(len(self.steps))]
        return torch.stack([u for u, _ in runs]), torch.stack([e for _, e in runs])

    def _compacting_per_exit(self, x):
        """All students advance stage by stage; the aggregator decides for all of them at once."""
        walks = {i: self.model.students[i].walk(x) for i in self.members}
        n, b = len(self.steps), x.shape[0]
        ids, running = torch.arange(b, device=x.device), b
        logits, exits = None, torch.full((n, b), LAST_EXIT, dtype=torch.long, device=x.device)
        exits[[i for i in range(n) if i not in walks]] = -1
        for j, _ in enumerate(zip(*walks.values())):  # every running student has run stage j
            if j == 0:
                continue
            heads = {i: w.head()[0] for i, w in walks.items()}  # {i: (b', K)}
            u = next(iter(heads.values()))
            z = self.aggregate(torch.stack([heads[i] if i in heads else torch.zeros_like(u) for i in range(n)]))  # (b', K)
            if logits is None:
                logits = z.new_zeros(b, z.shape[1])  # (B, K)
            if j == LAST_EXIT:
                logits[ids] = z
                break
            stop = self.policy.stops(z, self.thresholds, j)  # (b',)
            stopped = int(stop.sum())  # the one host read at this exit
            if stopped:
                order = torch.argsort(stop.to(torch.uint8), stable=True)  # (b',) running samples first
                running -= stopped
                keep, done = order[:running], order[running:]
                logits[ids[done]] = z[done]
                exits[list(walks), ids[done, None]] = j
                if running == 0:
                    break
                for w in walks.values():
                    w.keep(keep)
                ids = ids[keep]
        return Result(logits, exits)

    def _stream_one(self, x, index) -> Result:
        """One sample x (1, C, H, W): every student stops its stages at its own exit."""
        if not self.policy.local:
            return self._compacting_per_exit(x)
        sent, exits = self._compacting_local(x, index)
        return Result(self.aggregate(sent), exits, sent)
