"""What one device computes: its student's stages, up to the exit its policy picks, per sample.

`DeviceStep.run` is the one walk to an exit: the engine's compacting and streaming modes, the
runtime's devices and the timing all use it, so the distributed predictions equal the
single-process ones bit for bit. A batch compacts after each decision exit (finished samples
leave it); one sample is a batch of one that stops its stages at its exit.

At a decision exit of a policy with an exit-gate rule, the fused op computes the evidence and
the decision in one pass and Python only acts on it: the one value read back to the host per
exit is how many samples stopped there (none in a batch means nothing else to do).
"""
from collections.abc import Iterator

import torch

from distree.policies import LAST_EXIT, NUM_EXITS, LocalInputs, LocalPolicy


class DeviceStep:
    """Student `index` of N with its policy and thresholds (5,); bias_share (K,) for local rules."""

    def __init__(self, student, index: int, policy: LocalPolicy, thresholds: torch.Tensor,
                 bias_share: torch.Tensor):
        self.student, self.index, self.policy = student, index, policy
        self.device = next(student.parameters()).device
        self.thresholds = thresholds.to(self.device, torch.float32).clone()  # (5,) its own: set_thresholds writes it
        self.bias_share = bias_share.to(self.device)
        self.gates = [self._gate_arguments(j) for j in range(NUM_EXITS)]

    def _gate_arguments(self, j: int) -> dict | None:
        """The exit gate's arguments at decision exit j (0-based 1..5), or None where no op decides."""
        if not 1 <= j < LAST_EXIT or getattr(self.policy, "rule", None) is None:
            return None
        weight, bias = self.policy.gate(self.index, j)
        to = (lambda t: None if t is None else t.to(self.device, torch.float32).contiguous())
        return {"bias_share": to(self.bias_share), "gate_weight": to(weight), "gate_bias": to(bias),
                "threshold": self.thresholds[j - 1].clone(), "rule": self.policy.rule,
                "inclusive": self.policy.inclusive}

    def set_thresholds(self, thresholds: torch.Tensor) -> None:
        """Decide with thresholds (5,) from the next sample on, in place: the fused op's 0-d thresholds
        are the same tensors between samples, so nothing is rebuilt (the runtime's adaptation)."""
        self.thresholds.copy_(thresholds)
        for j, gate in enumerate(self.gates):
            if gate is not None:
                gate["threshold"].copy_(thresholds[j - 1])

    @torch.no_grad()
    def run_one(self, x: torch.Tensor, sample: int) -> tuple[torch.Tensor, int]:
        """x (C, H, W) -> (u (K,) float32 to send, 0-based exit), decided by this device alone."""
        u, exits = self.run(x.unsqueeze(0), torch.tensor([sample], device=self.device))
        return u[0].float().cpu(), int(exits[0])

    def run(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) with sample ids index (B,) -> (u (B, K) at each sample's exit, exits (B,) 0-based)."""
        b = x.shape[0]
        walk, ids, running = self.student.walk(x), torch.arange(b, device=x.device), b
        sent, exits = None, torch.full((b,), LAST_EXIT, dtype=torch.long, device=x.device)
        for j in walk:
            if j < LAST_EXIT and not self.policy.exits_early:
                continue  # last-exit skips the heads it would never use
            u, stop = self._exit(walk, j, index, ids)  # (b', K), (b',) or None
            if sent is None:
                sent = u.new_zeros(b, u.shape[1])  # (B, K)
            if j == LAST_EXIT:
                sent[ids] = u
                break
            stopped = 0 if stop is None else int(stop.sum())  # the one host read at this exit
            if stopped:
                order = torch.argsort(stop.to(torch.uint8), stable=True)  # (b',) running samples first
                running -= stopped
                keep, done = order[:running], order[running:]
                sent[ids[done]], exits[ids[done]] = u[done], j
                if running == 0:
                    break
                walk.keep(keep)
                ids = ids[keep]
        return sent, exits

    def _exit(self, walk, j: int, index: torch.Tensor, ids: torch.Tensor):
        """Exit j's evidence (b', K) and stop mask (b',) (None at exits 1 and 7, which never decide)."""
        gate = self.gates[j]
        if gate is not None:
            u, _, stop = walk.decide(**gate)  # the fused op decides
            return u, stop
        u, _, _ = walk.head()
        if not 1 <= j < LAST_EXIT:
            return u, None
        inputs = LocalInputs(u, walk.first, walk.previous, self.bias_share, index[ids], self.index, j)
        return u, self.policy.stops(inputs, self.thresholds, j)  # a policy scored in Python

    @torch.no_grad()
    def per_exit(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """x (C, H, W) -> (exit, u (K,)) at exits 2..7, for the aggregator to decide on.

        Exit 1 never stops a sample, so it sends nothing; the caller stops iterating when the
        aggregator says stop.
        """
        walk = self.student.walk(x.unsqueeze(0))  # (1, C, H, W)
        for j in walk:
            if j >= 1:
                yield j, walk.head()[0][0].float().cpu()  # (K,)
