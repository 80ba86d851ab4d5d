"""The exit head in plain PyTorch: the oracle every backend is tested against.

It is also the unfused head a model can fall back to (backend="reference"): autograd
differentiates it like any other PyTorch code.
"""
import torch

from .checks import check_exit_head_args
from .dtypes import accumulation_dtype


def inverse_cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """1 / cos(u, v) per row, in the accumulation dtype: 1 where a norm is 0, +inf where cos <= 0,
    NaN where a row holds NaN."""
    dot = (u * v).sum(1)  # (B,)
    uu, vv = (u * u).sum(1), (v * v).sum(1)  # (B,), (B,)
    cos = dot / (uu.sqrt() * vv.sqrt())
    score = torch.where(cos <= 0, torch.full_like(cos, float("inf")), 1 / cos)
    score = torch.where((uu == 0) | (vv == 0), torch.ones_like(cos), score)
    nan = dot.isnan() | uu.isnan() | vv.isnan()
    return torch.where(nan, torch.full_like(cos, float("nan")), score).float()


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
