"""What one device computes: its student's stages, up to the exit its policy picks, per sample.

`DeviceStep.run` is the one walk to an exit: the engine's compacting and streaming modes, the
runtime's devices and the timing all use it, so the distributed predictions equal the
single-process ones bit for bit. A batch compacts after each decision exit (finished samples
leave it); one sample is a batch of one that stops its stages at its exit.
"""
from collections.abc import Iterator

import torch

from distree.policies import LAST_EXIT, LocalInputs, Policy


class DeviceStep:
    """Student `index` of N with its policy and thresholds (5,); bias_share (K,) for local rules."""

    def __init__(self, student, index: int, policy: Policy, thresholds: torch.Tensor, bias_share: torch.Tensor):
        self.student, self.index, self.policy = student, index, policy
        self.device = next(student.parameters()).device
        self.thresholds, self.bias_share = thresholds.to(self.device), bias_share.to(self.device)

    @torch.no_grad()
    def run_one(self, x: torch.Tensor, sample: int) -> tuple[torch.Tensor, int]:
        """x (C, H, W) -> (u (K,) float32 to send, 0-based exit), decided by this device alone."""
        u, exits = self.run(x.unsqueeze(0), torch.tensor([sample], device=self.device))
        return u[0].float().cpu(), int(exits[0])

    def run(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) with sample ids index (B,) -> (u (B, K) at each sample's exit, exits (B,) 0-based)."""
        b = x.shape[0]
        walk, ids = self.student.walk(x), torch.arange(b, device=x.device)
        sent, exits = None, torch.full((b,), LAST_EXIT, dtype=torch.long, device=x.device)
        previous = None
        for j in walk:
            if j < LAST_EXIT and not self.policy.exits_early:
                continue  # last-exit skips the heads it would never use
            u, score, _ = walk.head()  # (b', K), (b',)
            if sent is None:
                sent = u.new_zeros(b, u.shape[1])  # (B, K)
            if j == LAST_EXIT:
                sent[ids] = u
                break
            if j >= 1:
                stop = self.stops(j, u, walk.first, previous, score, index[ids])  # (b',)
                done = stop.nonzero().squeeze(1)
                if done.numel():
                    keep = (~stop).nonzero().squeeze(1)
                    sent[ids[done]], exits[ids[done]] = u[done], j
                    walk.keep(keep)
                    ids, u = ids[keep], u[keep]
                if ids.numel() == 0:
                    break
            previous = u
        return sent, exits

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

    def stops(self, j, u, first, previous, score, index) -> torch.Tensor:
        """The policy's stop mask (b,) at decision exit j (0-based 1..5) for a batch of b samples."""
        x = LocalInputs(u, first, previous, score, self.bias_share, index, self.index, j)
        return self.policy.stops(x, self.thresholds, j)  # (b,)
