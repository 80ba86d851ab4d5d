"""Every exit rule's math, once, in plain PyTorch: the definition the reference ops compute.

The reference ops (reference.py, exit_gate_reference.py) score with these functions; the
learned gate is fitted on `gate_features` (distree.policies.learned_gate), so the features it
learns from are the ones it decides on; the C++, CUDA and Triton kernels (csrc/exit_scores.h,
triton_exit_gate.py) and the ONNX translation (distree/export/onnx_ops.py) are tested against
them. The edge rules are the kernels': a NaN in either row gives NaN, a zero vector gives
cos = 1 (and 1/cos = 1), and 1/cos is +inf where cos <= 0.
"""
import torch

GATE_FEATURES = ("max_prob", "margin", "entropy", "cos_first", "cos_previous")  # then, optionally, the K probabilities


def _edges(value: torch.Tensor, uv, uu, vv) -> torch.Tensor:
    """value (B,) with the edge rules, from <u, v> and the squared norms (or the norms) uu, vv:
    1 where a norm is 0, then NaN where any of them is NaN."""
    value = torch.where((uu == 0) | (vv == 0), torch.ones_like(value), value)
    nan = uv.isnan() | uu.isnan() | vv.isnan()
    return torch.where(nan, torch.full_like(value, float("nan")), value)


def cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """cos(u, v) per row (B, K) -> (B,) in u's dtype: 1 where a norm is 0, NaN where a row holds NaN.

    Written <u, v> / (|u| |v|) with torch's norm, the form the learned gates were first fitted
    with: the fit (L-BFGS) moves visibly with the last bit of a feature, so the form is kept.
    """
    uv, nu, nv = (u * v).sum(1), u.norm(dim=1), v.norm(dim=1)  # (B,) each
    return _edges(uv / (nu * nv), uv, nu, nv)


def inverse_cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """1 / cos(u, v) per row (B, K) -> (B,) float32, computed in u's dtype: 1 where a norm is 0,
    +inf where cos <= 0, NaN where a row holds NaN (DistrEE's score, the fused exit head's)."""
    uv, uu, vv = (u * v).sum(1), (u * u).sum(1), (v * v).sum(1)  # (B,) each
    cos = uv / (uu.sqrt() * vv.sqrt())  # (B,)
    score = torch.where(cos <= 0, torch.full_like(cos, float("inf")), 1 / cos)
    return _edges(score, uv, uu, vv).float()


def gate_features(f: torch.Tensor, first: torch.Tensor, previous: torch.Tensor, bias_share: torch.Tensor | None,
                  class_probabilities: bool) -> torch.Tensor:
    """The learned gate's features of one exit, in f's dtype: (B, 5) in GATE_FEATURES order (softmax of
    f + bias_share: its largest probability, the margin to the second, its entropy; cos(f, first),
    cos(f, previous)), then, with class_probabilities, the K probabilities: (B, 5 + K)."""
    first, previous = first.to(f.dtype), previous.to(f.dtype)  # (B, K)
    z = f if bias_share is None else f + bias_share.to(f.dtype)  # (B, K)
    log_p = z.log_softmax(1)  # (B, K)
    p = log_p.exp()  # (B, K)
    top = p.topk(2, dim=1).values  # (B, 2)
    entropy = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1)  # (B,); 0 log 0 = 0
    summary = torch.stack([top[:, 0], top[:, 0] - top[:, 1], entropy, cosine(f, first), cosine(f, previous)], 1)
    return torch.cat([summary, p], 1) if class_probabilities else summary  # (B, F)


def max_probability(f: torch.Tensor, bias_share: torch.Tensor | None) -> torch.Tensor:
    """The largest probability of softmax(f + bias_share) per row (B, K) -> (B,) (local confidence)."""
    z = f if bias_share is None else f + bias_share.to(f.dtype)  # (B, K)
    return z.log_softmax(1).exp().amax(1)


def rule_score(f: torch.Tensor, first, previous, bias_share, gate_weight, gate_bias, rule: str) -> torch.Tensor:
    """The score (B,) float32 of exit_gate's `rule` from the unrounded feature f (B, K), in f's dtype."""
    if rule == "inverse_cos":
        return inverse_cosine(f, first.to(f.dtype))
    if rule == "cos_previous":
        return cosine(f, previous.to(f.dtype)).float()
    if rule == "max_prob":
        return max_probability(f, bias_share).float()
    features = gate_features(f, first, previous, bias_share, gate_weight.shape[0] > len(GATE_FEATURES))  # (B, F)
    return torch.sigmoid(features @ gate_weight.to(f.dtype) + gate_bias.to(f.dtype)).float()
