"""The exit gate in plain PyTorch: the oracle every backend of exit_gate is tested against.

feat is exit_head_reference's, computed in the accumulation dtype so that the decision reads the
unrounded feature, as the kernels do; the rules' scores are exit_rules.py's, their one
definition; autograd differentiates it like any PyTorch code.
"""
from .dtypes import accumulation_dtype
from .exit_gate_checks import check_exit_gate_args, check_exit_gate_decide_args
from .exit_rules import rule_score
from .reference import exit_head_reference


def _passes(score, threshold, inclusive):
    return score >= threshold if inclusive else score > threshold


def exit_gate_reference(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias,
                        threshold, rule, inclusive):
    """(feat (B, K) x.dtype, score (B,) float32, exit (B,) bool), as distree::exit_gate."""
    check_exit_gate_args(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias,
                         threshold, rule)
    acc = accumulation_dtype(x.dtype)
    up = [None if t is None else t.to(acc) for t in (x, weight, bias)]
    f = exit_head_reference(*up, None, threshold)[0]  # (B, K) unrounded
    score = rule_score(f.detach(), first, previous, bias_share, gate_weight, gate_bias, rule)
    return f.to(x.dtype), score, _passes(score, threshold, inclusive)


def exit_gate_decide_reference(feat, first, previous, bias_share, gate_weight, gate_bias,
                               threshold, rule, inclusive):
    """(score (B,) float32, exit (B,) bool), as distree::exit_gate_decide."""
    check_exit_gate_decide_args(feat, first, previous, bias_share, gate_weight, gate_bias,
                                threshold, rule)
    f = feat.detach().to(accumulation_dtype(feat.dtype))  # (B, K)
    score = rule_score(f, first, previous, bias_share, gate_weight, gate_bias, rule)
    return score, _passes(score, threshold, inclusive)
