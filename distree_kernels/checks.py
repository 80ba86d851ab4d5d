"""Argument checks of exit_head in Python, mirroring csrc/exit_head_checks.h.

The fake kernel and the Python backends (reference, triton) call these so that every backend
rejects bad input with the same message the C++ kernels give.
"""
import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _like_x(t: torch.Tensor, x: torch.Tensor, name: str) -> None:
    if t.device != x.device:
        raise RuntimeError(f"exit_head: {name} is on {t.device} but x is on {x.device}")
    if t.dtype != x.dtype:
        raise RuntimeError(f"exit_head: {name} has dtype {t.dtype} but x has dtype {x.dtype}")


def check_exit_head_args(x, weight, bias, ref, threshold) -> int:
    """Raises RuntimeError naming the bad argument; returns D, the width of feat."""
    if x.dim() != 4:
        raise RuntimeError(f"exit_head: x must be 4-D (B, C, H, W), got shape {list(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"exit_head: x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.shape[2] * x.shape[3] == 0:
        raise RuntimeError(f"exit_head: x has H * W = 0 (shape {list(x.shape)}); "
                           "the average pool needs at least one position")
    B, C = x.shape[0], x.shape[1]
    D = C
    if weight is not None:
        _like_x(weight, x, "weight")
        if weight.dim() != 2 or weight.shape[1] != C:
            raise RuntimeError(f"exit_head: weight must have shape (D, {C}) to match x's C = {C}, "
                               f"got {list(weight.shape)}")
        D = weight.shape[0]
    if bias is not None:
        if weight is None:
            raise RuntimeError("exit_head: bias was given without weight")
        _like_x(bias, x, "bias")
        if bias.dim() != 1 or bias.shape[0] != D:
            raise RuntimeError(f"exit_head: bias must have shape ({D},) to match weight, "
                               f"got {list(bias.shape)}")
    if ref is not None:
        _like_x(ref, x, "ref")
        if ref.dim() != 2 or ref.shape[0] != B or ref.shape[1] != D:
            raise RuntimeError(f"exit_head: ref must have shape ({B}, {D}) = (B, D), "
                               f"got {list(ref.shape)}")
    if not isinstance(threshold, torch.Tensor) or threshold.dim() != 0:
        shape = list(threshold.shape) if isinstance(threshold, torch.Tensor) else type(threshold).__name__
        raise RuntimeError(f"exit_head: threshold must be a 0-d tensor, got {shape}")
    if threshold.dtype != torch.float32:
        raise RuntimeError(f"exit_head: threshold must be float32, got {threshold.dtype}")
    if threshold.device != x.device:
        raise RuntimeError(f"exit_head: threshold is on {threshold.device} but x is on {x.device}")
    return D
