"""torch.library registrations of the exit head: fake kernels for the C++ op, and the Triton
backend as ops of its own with their autograd (autograd.py), so that every backend traces under
torch.compile; and each op's FLOP formula (flops.py), so that FlopCounterMode counts them.

The schema of distree::exit_head lives in csrc/exit_head.cpp and its autograd in
csrc/exit_head_autograd.cpp (in C++: at B = 1 a Python autograd node costs more than the
kernels); this file adds the fake kernels, the shape inference that opcheck and torch.compile
trace with.
"""
import torch

from .autograd import make_backward, setup_context
from .checks import check_exit_head_args
from .flops import register_projection_flops

try:
    from . import _C  # noqa: F401  loading the library registers torch.ops.distree.*
    EXTENSION_ERROR = None
except ImportError as err:
    EXTENSION_ERROR = f"{type(err).__name__}: {err}"

try:
    from . import triton_exit_head
    TRITON_ERROR = None
except ImportError as err:
    triton_exit_head = None
    TRITON_ERROR = f"{type(err).__name__}: {err}"


def _fake_forward(x, weight, bias, ref, threshold):
    D = check_exit_head_args(x, weight, bias, ref, threshold)
    B = x.shape[0]
    return x.new_empty(B, D), x.new_empty(B, dtype=torch.float32), x.new_empty(B, dtype=torch.bool)


def _fake_backward(grad_p, x):
    # grad_x keeps x's memory format, as torch.empty_like does in the kernels.
    return torch.empty_like(x), grad_p.new_empty(x.shape[0], x.shape[1])


if EXTENSION_ERROR is None:
    torch.library.register_fake("distree::exit_head")(_fake_forward)
    torch.library.register_fake("distree::exit_head_backward")(_fake_backward)
    register_projection_flops(torch.ops.distree.exit_head)


if TRITON_ERROR is None:
    @torch.library.custom_op("distree::exit_head_triton", mutates_args=())
    def exit_head_triton(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         ref: torch.Tensor | None, threshold: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exit head on Triton kernels (CUDA tensors; CPU ones under TRITON_INTERPRET=1)."""
        check_exit_head_args(x, weight, bias, ref, threshold)
        return triton_exit_head.exit_head_forward(x, weight, bias, ref, threshold)

    @torch.library.custom_op("distree::exit_head_backward_triton", mutates_args=())
    def exit_head_backward_triton(grad_p: torch.Tensor, x: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """grad_x and the recomputed pool p in one Triton pass over x."""
        return triton_exit_head.exit_head_backward(grad_p, x)

    exit_head_triton.register_fake(_fake_forward)
    exit_head_backward_triton.register_fake(_fake_backward)
    exit_head_triton.register_autograd(make_backward(exit_head_backward_triton, inputs=5),
                                       setup_context=setup_context)
    register_projection_flops(torch.ops.distree.exit_head_triton)
