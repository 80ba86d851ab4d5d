"""exit_gate(): an exit's class evidence and its exit decision in one pass, and exit_gate_decide():
the same decision from evidence already computed (calibration over precomputed evidence).

Registers, for distree::exit_gate and distree::exit_gate_decide (schemas in csrc/exit_gate.cpp):
fake kernels, exit_gate's autograd (autograd.py, exit_head's: feat is exit_head's feat), a FLOP
formula, and the Triton backend as ops of its own, so that every backend traces under
torch.compile(fullgraph=True).
"""
import torch

from . import backends, ops
from .autograd import make_backward, setup_context
from .flops import register_projection_flops
from .exit_gate_checks import INCLUSIVE, check_exit_gate_args, check_exit_gate_decide_args
from .exit_gate_reference import exit_gate_decide_reference, exit_gate_reference

if ops.TRITON_ERROR is None:
    from . import triton_exit_gate


def _fake_exit_gate(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias,
                    threshold, rule, inclusive):
    K = check_exit_gate_args(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias,
                             threshold, rule)
    B = x.shape[0]
    return x.new_empty(B, K), x.new_empty(B, dtype=torch.float32), x.new_empty(B, dtype=torch.bool)


def _fake_decide(feat, first, previous, bias_share, gate_weight, gate_bias, threshold, rule, inclusive):
    check_exit_gate_decide_args(feat, first, previous, bias_share, gate_weight, gate_bias, threshold, rule)
    B = feat.shape[0]
    return feat.new_empty(B, dtype=torch.float32), feat.new_empty(B, dtype=torch.bool)


if ops.EXTENSION_ERROR is None:
    torch.library.register_fake("distree::exit_gate")(_fake_exit_gate)
    torch.library.register_fake("distree::exit_gate_decide")(_fake_decide)
    torch.library.register_autograd("distree::exit_gate",
                                    make_backward(torch.ops.distree.exit_head_backward, inputs=11),
                                    setup_context=setup_context)
    register_projection_flops(torch.ops.distree.exit_gate)


if ops.TRITON_ERROR is None:
    @torch.library.custom_op("distree::exit_gate_triton", mutates_args=())
    def exit_gate_triton(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         first: torch.Tensor | None, previous: torch.Tensor | None,
                         bias_share: torch.Tensor | None, gate_weight: torch.Tensor | None,
                         gate_bias: torch.Tensor | None, threshold: torch.Tensor, rule: str,
                         inclusive: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exit gate on one Triton kernel (CUDA tensors; CPU ones under TRITON_INTERPRET=1)."""
        check_exit_gate_args(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias,
                             threshold, rule)
        return triton_exit_gate.exit_gate_forward(x, weight, bias, first, previous, bias_share,
                                                  gate_weight, gate_bias, threshold, rule, inclusive)

    @torch.library.custom_op("distree::exit_gate_decide_triton", mutates_args=())
    def exit_gate_decide_triton(feat: torch.Tensor, first: torch.Tensor | None,
                                previous: torch.Tensor | None, bias_share: torch.Tensor | None,
                                gate_weight: torch.Tensor | None, gate_bias: torch.Tensor | None,
                                threshold: torch.Tensor, rule: str, inclusive: bool
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """exit_gate's decision from a given feat on one Triton kernel."""
        check_exit_gate_decide_args(feat, first, previous, bias_share, gate_weight, gate_bias,
                                    threshold, rule)
        return triton_exit_gate.exit_gate_decide(feat, first, previous, bias_share, gate_weight,
                                                 gate_bias, threshold, rule, inclusive)

    exit_gate_triton.register_fake(_fake_exit_gate)
    exit_gate_decide_triton.register_fake(_fake_decide)
    exit_gate_triton.register_autograd(make_backward(ops.exit_head_backward_triton, inputs=11),
                                       setup_context=setup_context)
    register_projection_flops(torch.ops.distree.exit_gate_triton)


def implementation(backend: str, fused: bool = True):
    """The callable of a resolved backend: exit_gate's (x, weight, bias, first, previous, bias_share,
    gate_weight, gate_bias, threshold, rule, inclusive) -> (feat, score, exit) if fused, else
    exit_gate_decide's (feat, first, ...) -> (score, exit)."""
    if backend == "reference":
        return exit_gate_reference if fused else exit_gate_decide_reference
    if backend in ("cpp", "cuda"):
        return torch.ops.distree.exit_gate.default if fused else torch.ops.distree.exit_gate_decide.default
    return (torch.ops.distree.exit_gate_triton.default if fused
            else torch.ops.distree.exit_gate_decide_triton.default)


def _as_tensor(value, device):
    """A Python float as the 0-d float32 tensor the ops take (a tensor passes through)."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value), dtype=torch.float32, device=device)


def exit_gate(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
              first: torch.Tensor | None, previous: torch.Tensor | None,
              bias_share: torch.Tensor | None, gate_weight: torch.Tensor | None,
              gate_bias: torch.Tensor | float | None, threshold: torch.Tensor | float, rule: str,
              inclusive: bool | None = None, backend: str = "auto"
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """exit_head's feat and the exit decision of `rule` on it, in one pass over x.

    x (B, C, H, W); weight (K, C) or None; bias (K,) or None; first, previous (B, K) in x's dtype;
    bias_share (K,) float32 or None; gate_weight (5,) or (5 + K,) float32; gate_bias 0-d.
    rule: "inverse_cos" (1/cos(feat, first)), "max_prob" (max softmax(feat + bias_share)),
    "cos_previous" (cos(feat, previous)) or "gate" (sigmoid of the learned gate's features).
    exit = score >= threshold if inclusive else score > threshold; inclusive=None takes the
    rule's policy's comparison (strict for "inverse_cos", inclusive otherwise).
    Returns feat (B, K) x.dtype, score (B,) float32, exit (B,) bool, all on x's device.
    """
    threshold, gate_bias = _as_tensor(threshold, x.device), _as_tensor(gate_bias, x.device)
    inclusive = INCLUSIVE.get(rule, True) if inclusive is None else inclusive
    impl = implementation(backends.resolve(backend, x.device), fused=True)
    return impl(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias, threshold,
                rule, inclusive)


def exit_gate_decide(feat: torch.Tensor, first: torch.Tensor | None, previous: torch.Tensor | None,
                     bias_share: torch.Tensor | None, gate_weight: torch.Tensor | None,
                     gate_bias: torch.Tensor | float | None, threshold: torch.Tensor | float,
                     rule: str, inclusive: bool | None = None, backend: str = "auto"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """exit_gate's (score, exit) from a feat (B, K) already computed; same arguments and rules.

    For float32 on the cpp backend the score is bit-identical to exit_gate's on the x that gave
    feat, so thresholds calibrated on precomputed evidence hold for the fused op.
    """
    threshold, gate_bias = _as_tensor(threshold, feat.device), _as_tensor(gate_bias, feat.device)
    inclusive = INCLUSIVE.get(rule, True) if inclusive is None else inclusive
    impl = implementation(backends.resolve(backend, feat.device), fused=False)
    return impl(feat, first, previous, bias_share, gate_weight, gate_bias, threshold, rule, inclusive)
