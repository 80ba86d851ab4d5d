"""What one device computes for one sample: its student's stages, up to the exit it chooses.

This is the per-device step the runtime is built around. It mirrors the inference engine's
streaming mode sample by sample (same stages, same heads, the same policy calls on a batch of
one), so the distributed predictions equal the single-process ones bit for bit.
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
        index = torch.tensor([sample], device=self.device)
        first = previous = None
        h = x.unsqueeze(0)  # (1, C, H, W)
        for j, (stage, head) in enumerate(zip(self.student.stages, self.student.heads)):
            h = stage(h)  # (1, C_j, H_j, W_j)
            if j < LAST and not self.policy.exits_early:
                continue  # last-exit skips the heads it would never use
            u, score, _ = head(h, first)  # (1, K), (1,)
            first = u if first is None else first
            if j == LAST or (j >= 1 and bool(self._stops(j, u, first, previous, score, index))):
                return u[0].float().cpu(), j
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

    def _stops(self, j, u, first, previous, score, index) -> torch.Tensor:
        x = LocalInputs(u, first, previous, score, self.bias_share, index, self.index, j)
        return self.policy.passes(self.policy.score(x), self.thresholds[j - 1])  # (1,)
