"""Small per-sample statistics of the aggregated logits that the per-exit policies score with.

(The local rules' scores, the learned gate's features among them, are distree_kernels.exit_rules'.)

Each is a handful of ops: on a device deciding one sample at a time, every op's dispatch costs
more than its arithmetic.
"""
import torch


def max_probability(logits: torch.Tensor) -> torch.Tensor:
    """The largest softmax probability per row (B, K) -> (B,)."""
    return logits.float().softmax(-1).amax(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of softmax per row (B, K) -> (B,)."""
    log_p = logits.float().log_softmax(-1)  # (B, K)
    return -(log_p.exp() * log_p).sum(-1)
