"""Small per-sample statistics of class evidence that several policies score with.

Each is a handful of ops: on a device deciding one sample at a time, every op's dispatch costs
more than its arithmetic.
"""
import torch


def cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """cos(u, v) per row (B, K) -> (B,), with the fused op's rule: 1 where either norm is 0."""
    dot = (u * v).sum(-1)  # (B,)
    norms = u.norm(dim=-1) * v.norm(dim=-1)  # (B,)
    return torch.where(norms > 0, dot / norms, torch.ones_like(dot))


def max_probability(logits: torch.Tensor) -> torch.Tensor:
    """The largest softmax probability per row (B, K) -> (B,)."""
    return logits.float().softmax(-1).amax(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of softmax per row (B, K) -> (B,)."""
    log_p = logits.float().log_softmax(-1)  # (B, K)
    return -(log_p.exp() * log_p).sum(-1)
