"""The exit gate in plain PyTorch: the oracle every backend of exit_gate is tested against.

feat is exit_head_reference's, computed in the accumulation dtype so that the decision reads the
unrounded feature, as the kernels do; autograd differentiates it like any PyTorch code.
"""
import torch

from .dtypes import accumulation_dtype
from .exit_gate_checks import check_exit_gate_args, check_exit_gate_decide_args
from .reference import exit_head_reference, inverse_cosine


def cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """cos(u, v) per row (B, K) -> (B,): 1 where a norm is 0, NaN where a row holds NaN."""
    uu, vv = (u * u).sum(1), (v * v).sum(1)  # (B,), (B,)
    cos = (u * v).sum(1) / (uu.sqrt() * vv.sqrt())  # (B,)
    return torch.where((uu == 0) | (vv == 0), torch.ones_like(cos), cos)


def gate_scores(f, first, previous, bias_share, gate_weight, gate_bias, rule):
    """The rule's score (B,) float32 from the unrounded feat f (B, K) in the accumulation dtype."""
    acc = f.dtype
    first = None if first is None else first.to(acc)  # (B, K)
    previous = None if previous is None else previous.to(acc)  # (B, K)
    if rule == "inverse_cos":
        return inverse_cosine(f, first)
    if rule == "cos_previous":
        return cosine(f, previous).float()
    z = f if bias_share is None else f + bias_share.to(acc)  # (B, K)
    log_p = z.log_softmax(1)  # (B, K)
    p = log_p.exp()  # (B, K)
    if rule == "max_prob":
        return p.amax(1).float()
    top = p.topk(2, dim=1).values  # (B, 2)
    entropy = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1)  # (B,); 0 log 0 = 0
    summary = [top[:, 0], top[:, 0] - top[:, 1], entropy, cosine(f, first), cosine(f, previous)]
    features = torch.stack(summary, 1)  # (B, 5)
    if gate_weight.shape[0] > features.shape[1]:
        features = torch.cat([features, p], 1)  # (B, 5 + K)
    return torch.sigmoid(features @ gate_weight.to(acc) + gate_bias.to(acc)).float()


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
    score = gate_scores(f.detach(), first, previous, bias_share, gate_weight, gate_bias, rule)
    return f.to(x.dtype), score, _passes(score, threshold, inclusive)


def exit_gate_decide_reference(feat, first, previous, bias_share, gate_weight, gate_bias,
                               threshold, rule, inclusive):
    """(score (B,) float32, exit (B,) bool), as distree::exit_gate_decide."""
    check_exit_gate_decide_args(feat, first, previous, bias_share, gate_weight, gate_bias,
                                threshold, rule)
    f = feat.detach().to(accumulation_dtype(feat.dtype))  # (B, K)
    score = gate_scores(f, first, previous, bias_share, gate_weight, gate_bias, rule)
    return score, _passes(score, threshold, inclusive)
