"""exit_head(): the fused exit head as a function, with an explicit choice of backend."""
import torch

from . import backends


def exit_head(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              ref: torch.Tensor | None = None, threshold: float | torch.Tensor = 1.0,
              backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ReLU, global average pool, projection, 1/cos against `ref` and `score > threshold`.

    x (B, C, H, W); weight (D, C) or None; bias (D,) or None; ref (B, D) or None.
    Returns feat (B, D) in x's dtype, score (B,) float32 and exit (B,) bool, all on x's device.
    A Python-float threshold becomes a 0-d float32 tensor here; pass a tensor to avoid the copy.
    """
    if not isinstance(threshold, torch.Tensor):
        threshold = torch.tensor(float(threshold), dtype=torch.float32, device=x.device)
    name = backends.resolve(backend, x.device)
    return backends.implementation(name)(x, weight, bias, ref, threshold)
