"""What one device computes for one sample: its student's stages, up to the exit it chooses.

The inference engine's streaming mode and the distributed runtime's devices both run this one
step, so the distributed predictions equal the single-process ones bit for bit.
"""
from collections.abc import Iterator

import torch

from distree.policies import NUM_EXITS, LocalInputs, Policy

LAST = NUM_EXITS - 1


class DeviceStep:
    """Student `index` of N with its policy and thresholds (5,); bias_share (K,) for local rules."""

    def __init__(self, student, index: int, policy: Policy, thresholds: torch.Tensor, bias_share: torch.Tensor):
        self.student, self.index, self.policy = student, index, policy
        self.device = next(student.parameters()).device
        self.thresholds, self.bias_share = thresholds.to(self.device), bias_share.to(self.device)

    @torch.no_grad()
    def local(self, x: torch.Tensor, sample: int) -> tuple[torch.Tensor, int]:
        """x (C, H, W) -> (u (K,) float32 to send, 0-based exit), decided by this device alone."""
        u, j = self.run_to_exit(x.unsqueeze(0), torch.tensor([sample], device=self.device))
        return u[0].float().cpu(), j

    def run_to_exit(self, h: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, int]:
        """h (1, C, H, W) with its sample id index (1,) -> (u (1, K) at the exit, 0-based exit)."""
        first = previous = None
        for j, (stage, head) in enumerate(zip(self.student.stages, self.student.heads)):
            h = stage(h)  # (1, C_j, H_j, W_j)
            if j < LAST and not self.policy.exits_early:
                continue  # last-exit skips the heads it would never use
            u, score, _ = head(h, first)  # (1, K), (1,)
            first = u if first is None else first
            if j == LAST or (j >= 1 and bool(self.stops(j, u, first, previous, score, index))):
                return u, j
            previous = u

    @torch.no_grad()
    def per_exit(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """x (C, H, W) -> (exit, u (K,)) at exits 2..7, for the aggregator to decide on.

        Exit 1 never stops a sample, so it sends nothing; the caller stops iterating when the
        aggregator says stop.
        """
        h = x.unsqueeze(0)  # (1, C, H, W)
        for j, (stage, head) in enumerate(zip(self.student.stages, self.student.heads)):
            h = stage(h)  # (1, C_j, H_j, W_j)
            if j >= 1:
                yield j, head(h)[0][0].float().cpu()  # (K,)

    def stops(self, j, u, first, previous, score, index) -> torch.Tensor:
        """The policy's stop mask (b,) at decision exit j (0-based 1..5) for a batch of b samples."""
        x = LocalInputs(u, first, previous, score, self.bias_share, index, self.index, j)
        return self.policy.passes(self.policy.score(x), self.thresholds[j - 1])  # (1,)
