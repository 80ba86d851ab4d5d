"""Small per-sample statistics of class evidence that several policies score with."""
import torch


def cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """cos(u, v) per row (B, K) -> (B,), with the fused op's rule: 1 where either norm is 0."""
    dot = (u * v).sum(-1)  # (B,)
    norms = u.norm(dim=-1) * v.norm(dim=-1)  # (B,)
    return torch.where(norms > 0, dot / norms, torch.ones_like(dot))


def softmax_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Max probability, top-1 minus top-2 probability, and entropy (nats) of softmax rows (B, K)."""
    p = logits.float().softmax(-1)  # (B, K)
    top2 = p.topk(2, dim=-1).values  # (B, 2)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (B,)
    return top2[:, 0], top2[:, 0] - top2[:, 1], entropy
