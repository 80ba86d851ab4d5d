"""The fused exit ops in standard ONNX ops: the translation table torch.onnx.export is given.

`torch.ops.distree.exit_head` and `torch.ops.distree.exit_gate` are C++ kernels, so the ONNX
exporter cannot see inside them; these onnxscript functions (traced, opset 18) rebuild each op
from the rules' one definition (distree_kernels/exit_rules.py, the reference ops') so that
stock ONNX Runtime runs the graph with no custom-op library. The score arithmetic follows the
C++ kernel (csrc/exit_scores.h): the stable softmax log p = z - max - log sum exp(z - max), 1
where a norm is 0, NaN kept, 1/cos = +inf where cos <= 0, and a NaN score never exits.
"""
import math

import torch
from onnxscript import opset18 as op

from distree_kernels.exit_gate_checks import SUMMARIES

OPSET = 18


def _feature(x, weight, bias):
    """ReLU, global average pool and projection: x (B, C, H, W) -> feat (B, K)."""
    pooled = op.ReduceMean(op.Relu(x), op.Constant(value_ints=[2, 3]), keepdims=0)  # (B, C)
    if weight is None:
        return pooled if bias is None else op.Add(pooled, bias)
    if bias is None:
        return op.Gemm(pooled, weight, transB=1)  # (B, K)
    return op.Gemm(pooled, weight, bias, transB=1)  # (B, K)


def _sum(v):
    """Row sums (B, K) -> (B,)."""
    return op.ReduceSum(v, op.Constant(value_ints=[1]), keepdims=0)


def _like(value: float, v):
    return op.CastLike(op.Constant(value_float=value), v)


def _cosine_sums(u, v):
    return _sum(op.Mul(u, v)), _sum(op.Mul(u, u)), _sum(op.Mul(v, v))  # (B,) each


def _any_nan(uv, uu, vv):
    return op.Or(op.Or(op.IsNaN(uv), op.IsNaN(uu)), op.IsNaN(vv))


def _any_zero(uu, vv):
    return op.Or(op.Equal(uu, _like(0.0, uu)), op.Equal(vv, _like(0.0, vv)))


def _inverse_cosine(u, v):
    """1 / cos(u, v) per row (B,): 1 where a norm is 0, +inf where cos <= 0, NaN where a row holds NaN."""
    uv, uu, vv = _cosine_sums(u, v)
    cos = op.Div(uv, op.Mul(op.Sqrt(uu), op.Sqrt(vv)))
    score = op.Where(op.LessOrEqual(cos, _like(0.0, cos)), _like(math.inf, cos), op.Reciprocal(cos))
    score = op.Where(_any_zero(uu, vv), _like(1.0, cos), score)
    return op.Where(_any_nan(uv, uu, vv), _like(math.nan, cos), score)


def _cosine(u, v):
    """cos(u, v) per row (B,): 1 where a norm is 0, NaN where a row holds NaN."""
    uv, uu, vv = _cosine_sums(u, v)
    cos = op.Div(uv, op.Mul(op.Sqrt(uu), op.Sqrt(vv)))
    cos = op.Where(_any_zero(uu, vv), _like(1.0, cos), cos)
    return op.Where(_any_nan(uv, uu, vv), _like(math.nan, cos), cos)


def _gate_score(f, first, previous, bias_share, gate_weight, gate_bias, rule: str):
    """The rule's score (B,) from feat f (B, K), as csrc/exit_scores.h's exit_gate_score."""
    if rule == "inverse_cos":
        return _inverse_cosine(f, first)
    if rule == "cos_previous":
        return _cosine(f, previous)
    z = f if bias_share is None else op.Add(f, bias_share)  # (B, K)
    top, _ = op.TopK(z, op.Constant(value_ints=[2]), axis=1)  # (B, 2)
    top1 = op.Slice(top, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[1]))
    shifted = op.Sub(z, top1)  # (B, K): z - max
    lse = op.Log(op.ReduceSum(op.Exp(shifted), op.Constant(value_ints=[1]), keepdims=1))  # (B, 1)
    log_p = op.Sub(shifted, lse)  # (B, K)
    p = op.Exp(log_p)  # (B, K)
    p1 = op.Squeeze(op.Exp(op.Neg(lse)), op.Constant(value_ints=[1]))  # (B,)
    if rule == "max_prob":
        return p1
    top2 = op.Slice(top, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]), op.Constant(value_ints=[1]))
    p2 = op.Squeeze(op.Exp(op.Sub(op.Sub(top2, top1), lse)), op.Constant(value_ints=[1]))  # (B,)
    entropy = op.Neg(_sum(op.Where(op.Greater(p, _like(0.0, p)), op.Mul(p, log_p), _like(0.0, p))))  # (B,)
    summary = [p1, op.Sub(p1, p2), entropy, _cosine(f, first), _cosine(f, previous)]
    axis = op.Constant(value_ints=[1])
    features = op.Concat(*[op.Unsqueeze(s, axis) for s in summary], axis=1)  # (B, 5)
    if gate_weight.shape[0] > SUMMARIES:
        features = op.Concat(features, p, axis=1)  # (B, 5 + K)
    t = op.Add(op.MatMul(features, gate_weight), gate_bias)  # (B,)
    return op.Sigmoid(t)


def _passes(score, threshold, inclusive: bool):
    """score >= threshold if inclusive else score > threshold; NaN never passes."""
    return op.GreaterOrEqual(score, threshold) if inclusive else op.Greater(score, threshold)


def exit_head(x, weight=None, bias=None, ref=None, threshold=None):
    """distree::exit_head: (feat (B, K), score (B,) 1/cos against ref, or 1, exit (B,) score > threshold)."""
    feat = _feature(x, weight, bias)
    if ref is None:
        score = op.Expand(_like(1.0, threshold), op.Shape(feat, start=0, end=1))  # (B,)
    else:
        score = _inverse_cosine(feat, ref)
    return feat, score, op.Greater(score, threshold)


def exit_gate(x, weight=None, bias=None, first=None, previous=None, bias_share=None, gate_weight=None,
              gate_bias=None, threshold=None, rule: str = "inverse_cos", inclusive: bool = False):
    """distree::exit_gate: (feat (B, K), score (B,), exit (B,)) of `rule` on x's exit feature."""
    feat = _feature(x, weight, bias)
    score = _gate_score(feat, first, previous, bias_share, gate_weight, gate_bias, rule)
    return feat, score, _passes(score, threshold, inclusive)


def translation_table() -> dict:
    """{op overload: onnxscript function} for torch.onnx.export's custom_translation_table."""
    return {torch.ops.distree.exit_head.default: exit_head, torch.ops.distree.exit_gate.default: exit_gate}
