"""FLOP formulas of the fused ops, registered with torch.utils.flop_counter.

Without one, FlopCounterMode counts a fused exit head as 0 FLOPs, while the unfused reference
head it replaces counts its projection as a matmul. Registered here, a model counts the same
FLOPs whichever head backend it runs, with no custom_mapping.
"""
import torch
from torch.utils.flop_counter import register_flop_formula


def projection_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of an op whose arguments start (x (B, C, ...), weight (D, C) or None, ...): its
    projection, counted as flop_counter counts a matmul, 2 * B * C * D; 0 without weight.
    (The pool, the cosine and the threshold are not counted, as flop_counter counts no
    elementwise work or reduction of the reference head either.)"""
    if weight_shape is None:
        return 0
    return 2 * x_shape[0] * weight_shape[0] * weight_shape[1]


def register_projection_flops(*ops: torch._ops.OpOverloadPacket) -> None:
    """Counts each op (torch.ops.distree.NAME) with projection_flops from now on."""
    register_flop_formula(list(ops))(projection_flops)
