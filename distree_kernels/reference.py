"""The exit head in plain PyTorch: the oracle every backend is tested against.

It is also the unfused head a model can fall back to (backend="reference"): autograd
differentiates it like any other PyTorch code.
"""
import torch

from .checks import check_exit_head_args
from .dtypes import accumulation_dtype
from .exit_rules import inverse_cosine


def exit_head_reference(x, weight=None, bias=None, ref=None, threshold=None):
    """(feat (B, D) x.dtype, score (B,) float32, exit (B,) bool), as in docs/exit_head.md."""
    if threshold is None or isinstance(threshold, (int, float)):
        threshold = torch.tensor(1.0 if threshold is None else float(threshold), device=x.device)
    check_exit_head_args(x, weight, bias, ref, threshold)
    acc = accumulation_dtype(x.dtype)
    xf = x.to(acc)
    p = xf.relu().mean((2, 3))  # (B, C); relu keeps NaN, and its gradient is (x > 0)
    f = p if weight is None else p @ weight.to(acc).T  # (B, D)
    if bias is not None:
        f = f + bias.to(acc)
    if ref is None:
        score = torch.ones(x.shape[0], device=x.device)
    else:
        score = inverse_cosine(f.detach(), ref.detach().to(acc))
    return f.to(x.dtype), score, score > threshold
