"""Last exit: the distributed model without early exit, the baseline for every saving."""
import torch

from distree.policies.base import LocalInputs, LocalPolicy


class LastExitPolicy(LocalPolicy):
    """Every student runs to exit 7; its score never passes, and the engine skips exits 1..6."""

    name = "last-exit"
    exits_early = False

    def score(self, x: LocalInputs):
        return x.u.new_full(x.u.shape[:1], -torch.inf, dtype=torch.float32)  # (B,)
