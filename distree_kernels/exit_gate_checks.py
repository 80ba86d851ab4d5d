"""Argument checks of exit_gate and exit_gate_decide in Python, mirroring csrc/exit_gate_checks.h.

The fake kernels and the Python backends (reference, triton) call these so that every backend
rejects bad input with the message the C++ kernels give. The part exit_gate shares with
exit_head (x, weight, bias, threshold) is checks.py's check_exit_head_args.
"""
import torch

from .checks import FLOAT_DTYPES, check_exit_head_args
from .exit_rules import GATE_FEATURES

RULES = ("inverse_cos", "max_prob", "cos_previous", "gate")
SUMMARIES = len(GATE_FEATURES)  # gate features before the K class probabilities
# The optional inputs each rule reads.
NEEDS = {"inverse_cos": ("first",), "max_prob": (), "cos_previous": ("previous",),
         "gate": ("first", "previous", "gate_weight", "gate_bias")}
# The comparison each rule's policy stops with (distree/policies): DistrEE's rule is strict.
INCLUSIVE = {"inverse_cos": False, "max_prob": True, "cos_previous": True, "gate": True}


def _float32(t, shape, like, like_name, name, op):
    if t.device != like.device:
        raise RuntimeError(f"{op}: {name} is on {t.device} but {like_name} is on {like.device}")
    if t.dtype != torch.float32:
        raise RuntimeError(f"{op}: {name} must be float32, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise RuntimeError(f"{op}: {name} must have shape {list(shape)}, got {list(t.shape)}")


def check_decision_args(like, like_name, B, K, first, previous, bias_share, gate_weight, gate_bias,
                        rule, op):
    """Checks the decision's inputs against the (B, K) evidence they score (dtype and device
    of `like`); raises RuntimeError naming the bad argument."""
    if rule not in RULES:
        raise RuntimeError(f"{op}: unknown rule '{rule}'; choose one of "
                           + ", ".join(f"'{r}'" for r in RULES))
    given = {"first": first, "previous": previous, "gate_weight": gate_weight, "gate_bias": gate_bias}
    for name in ("first", "previous", "gate_weight", "gate_bias"):
        if name in NEEDS[rule] and given[name] is None:
            raise RuntimeError(f"{op}: rule '{rule}' needs {name}, got None")
    for name, v in (("first", first), ("previous", previous)):
        if v is None:
            continue
        if v.device != like.device:
            raise RuntimeError(f"{op}: {name} is on {v.device} but {like_name} is on {like.device}")
        if v.dtype != like.dtype:
            raise RuntimeError(f"{op}: {name} has dtype {v.dtype} but {like_name} has dtype {like.dtype}")
        if v.dim() != 2 or v.shape[0] != B or v.shape[1] != K:
            raise RuntimeError(f"{op}: {name} must have shape ({B}, {K}) = (B, K), got {list(v.shape)}")
    if bias_share is not None:
        _float32(bias_share, (K,), like, like_name, "bias_share", op)
    if gate_weight is not None:
        F = gate_weight.shape[0] if gate_weight.dim() == 1 else -1
        if F not in (SUMMARIES, SUMMARIES + K):
            raise RuntimeError(f"{op}: gate_weight must have shape (5,) or (5 + K,) = "
                               f"({SUMMARIES + K},), got {list(gate_weight.shape)}")
        _float32(gate_weight, (F,), like, like_name, "gate_weight", op)
    if gate_bias is not None:
        _float32(gate_bias, (), like, like_name, "gate_bias", op)
    if rule == "gate" and K < 2:
        raise RuntimeError(f"{op}: rule 'gate' needs K >= 2 classes for the margin, got K = {K}")


def check_exit_gate_args(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias,
                         threshold, rule) -> int:
    """Every check of exit_gate, in the C++ kernel's order; returns K, the width of feat."""
    try:
        K = check_exit_head_args(x, weight, bias, None, threshold)
    except RuntimeError as err:  # checks.py names exit_head; the C++ checks take the op's name
        raise RuntimeError(str(err).replace("exit_head:", "exit_gate:", 1)) from None
    check_decision_args(x, "x", x.shape[0], K, first, previous, bias_share, gate_weight, gate_bias,
                        rule, "exit_gate")
    return K


def check_exit_gate_decide_args(feat, first, previous, bias_share, gate_weight, gate_bias,
                                threshold, rule) -> int:
    """Every check of exit_gate_decide, in the C++ kernel's order; returns K."""
    op = "exit_gate_decide"
    if feat.dim() != 2:
        raise RuntimeError(f"{op}: feat must be 2-D (B, K), got shape {list(feat.shape)}")
    if feat.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"{op}: feat must be float32, float16, bfloat16 or float64, got {feat.dtype}")
    B, K = feat.shape
    check_decision_args(feat, "feat", B, K, first, previous, bias_share, gate_weight, gate_bias,
                        rule, op)
    if not isinstance(threshold, torch.Tensor) or threshold.dim() != 0:
        shape = list(threshold.shape) if isinstance(threshold, torch.Tensor) else type(threshold).__name__
        raise RuntimeError(f"{op}: threshold must be a 0-d tensor, got shape {shape}")
    if threshold.dtype != torch.float32:
        raise RuntimeError(f"{op}: threshold must be float32, got {threshold.dtype}")
    if threshold.device != feat.device:
        raise RuntimeError(f"{op}: threshold is on {threshold.device} but feat is on {feat.device}")
    return K
