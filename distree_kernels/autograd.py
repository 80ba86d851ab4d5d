"""The exit ops' autograd in Python, shared by exit_head's and exit_gate's Triton ops and by
exit_gate's C++ op: both ops differentiate only feat, whose gradient is exit_head's.

The formulas are csrc/exit_head_autograd.cpp's (exit_head's C++ op has its autograd there: at
B = 1 a Python autograd node costs more than the kernels). Score and exit get no gradient.
"""
from .dtypes import accumulation_dtype


def setup_context(ctx, inputs, output):
    """Saves x and weight; inputs start (x, weight, bias, ...), outputs are (feat, score, exit)."""
    x, weight, bias = inputs[:3]
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[1], output[2])


def make_backward(backward_op, inputs: int):
    """The backward of an op of `inputs` inputs (x, weight and bias first) whose feat is exit_head's;
    backward_op(grad_p, x) -> (grad_x, p) is the pass over x."""
    def backward(ctx, grad_feat, _grad_score, _grad_exit):
        x, weight = ctx.saved_tensors
        g = grad_feat.to(accumulation_dtype(x.dtype))  # (B, D)
        grad_p = g if weight is None else g @ weight.to(g.dtype)  # (B, C)
        grad_x, p = backward_op(grad_p.contiguous(), x)  # (B, C, H, W), (B, C)
        grad_w = None if weight is None else (g.T @ p).to(weight.dtype)  # (D, C)
        grad_b = g.sum(0).to(x.dtype) if ctx.has_bias else None  # (D,)
        return (grad_x, grad_w, grad_b) + (None,) * (inputs - 3)
    return backward
