"""Triton backend of the exit gate: exit_gate and exit_gate_decide, one kernel launch each.

exit_gate runs one program per sample: it pools the sample's (C, H*W) block tile by tile and
folds each pooled tile into the projection as exit_head's Triton kernel does (its pooling loop,
1/cos and layout and tiling helpers are triton_exit_head.py's), keeps the whole feat row (K values) in
registers and takes the rule's score from it there, so only (feat, score, exit) leave the chip.
exit_gate_decide runs the same decision (_decide) on rows of a given feat.

The callers validate the inputs; these functions assume them.
"""
import torch
import triton
import triton.language as tl

from .exit_gate_checks import RULES, SUMMARIES
from .triton_exit_head import (_TILE, _acc_dtype, _device_guard, _inverse_cosine_of_sums, _num_warps, _outputs,
                               _pool_tile, _pool_tiles)


@triton.jit
def _cosine_sums(u, v):
    return tl.sum(u * v, axis=0), tl.sum(u * u, axis=0), tl.sum(v * v, axis=0)


@triton.jit
def _cosine(u, v):
    """cos of two masked (BLOCK_K,) rows: 1 where a norm is 0, NaN where a row holds NaN."""
    uv, uu, vv = _cosine_sums(u, v)
    cos = uv / (tl.sqrt(uu) * tl.sqrt(vv))
    cos = tl.where((uu == 0) | (vv == 0), 1.0, cos)
    return tl.where((uv != uv) | (uu != uu) | (vv != vv), float("nan"), cos)


@triton.jit
def _inverse_cosine(u, v):
    """1 / cos with exit_head's rules: 1 where a norm is 0, +inf where cos <= 0, NaN stays NaN."""
    uv, uu, vv = _cosine_sums(u, v)
    return _inverse_cosine_of_sums(uv, uu, vv)


@triton.jit
def _decide(f, first, previous, bias_share, offs_k, k_mask, gw_ptr, gb_ptr, thr_ptr,
            RULE: tl.constexpr, PROBABILITIES: tl.constexpr, INCLUSIVE: tl.constexpr):
    """(score float32, exit) of one sample from its unrounded feat row f; every row (BLOCK_K,)
    in the accumulation dtype, 0 on padded lanes. RULE indexes exit_gate_checks.RULES."""
    if RULE == 0:
        score = _inverse_cosine(f, first)
    elif RULE == 2:
        score = _cosine(f, previous)
    else:
        z = tl.where(k_mask, f + bias_share, float("-inf"))
        top1 = tl.max(z, axis=0)
        lse = tl.log(tl.sum(tl.where(k_mask, tl.exp(z - top1), 0.0), axis=0))
        log_p = (z - top1) - lse
        p = tl.where(k_mask, tl.exp(log_p), 0.0)
        p1 = tl.exp(-lse)
        if RULE == 1:
            score = p1
        else:
            # the second largest: the largest once the first argmax is taken out (ties stay)
            top2 = tl.max(tl.where(offs_k == tl.argmax(z, axis=0), float("-inf"), z), axis=0)
            p2 = tl.exp((top2 - top1) - lse)
            entropy = -tl.sum(tl.where(p > 0, p * log_p, 0.0), axis=0)  # 0 log 0 = 0
            t = (tl.load(gb_ptr) + tl.load(gw_ptr) * p1 + tl.load(gw_ptr + 1) * (p1 - p2)
                 + tl.load(gw_ptr + 2) * entropy + tl.load(gw_ptr + 3) * _cosine(f, first)
                 + tl.load(gw_ptr + 4) * _cosine(f, previous))
            if PROBABILITIES:
                w = tl.load(gw_ptr + 5 + offs_k, mask=k_mask, other=0.0)
                t += tl.sum(w * p, axis=0)
            score = 1.0 / (1.0 + tl.exp(-t))
        # max and argmax may skip NaN: a NaN anywhere in f makes the score NaN.
        has_nan = tl.sum(tl.where(f != f, 1, 0), axis=0) > 0
        score = tl.where(has_nan, float("nan"), score)
    score = score.to(tl.float32)
    thr = tl.load(thr_ptr)
    if INCLUSIVE:
        exit_ = score >= thr
    else:
        exit_ = score > thr
    return score, exit_  # NaN compares false: never exits


@triton.jit
def _load_rows(first_ptr, prev_ptr, bs_ptr, b, s_first, s_prev, offs_k, k_mask, ACC: tl.constexpr,
               HAS_FIRST: tl.constexpr, HAS_PREV: tl.constexpr, HAS_BS: tl.constexpr):
    """Sample b's first and previous rows and bias_share as (BLOCK_K,) ACC rows (0 if absent)."""
    k64 = offs_k.to(tl.int64)
    first = tl.zeros(offs_k.shape, dtype=ACC)
    prev = tl.zeros(offs_k.shape, dtype=ACC)
    bs = tl.zeros(offs_k.shape, dtype=ACC)
    if HAS_FIRST:
        first = tl.load(first_ptr + b * s_first + k64, mask=k_mask, other=0.0).to(ACC)
    if HAS_PREV:
        prev = tl.load(prev_ptr + b * s_prev + k64, mask=k_mask, other=0.0).to(ACC)
    if HAS_BS:
        bs = tl.load(bs_ptr + k64, mask=k_mask, other=0.0).to(ACC)
    return first, prev, bs


@triton.jit
def _decide_row(f, b, first_ptr, prev_ptr, bs_ptr, gw_ptr, gb_ptr, thr_ptr, score_ptr, exit_ptr, s_first, s_prev,
                offs_k, k_mask, HAS_FIRST: tl.constexpr, HAS_PREV: tl.constexpr, HAS_BS: tl.constexpr,
                RULE: tl.constexpr, PROBABILITIES: tl.constexpr, INCLUSIVE: tl.constexpr, ACC: tl.constexpr):
    """Sample b's decision from its feat row f (BLOCK_K,), stored as score[b] and exit[b]."""
    first, prev, bs = _load_rows(first_ptr, prev_ptr, bs_ptr, b, s_first, s_prev, offs_k, k_mask,
                                 ACC, HAS_FIRST, HAS_PREV, HAS_BS)
    score, exit_ = _decide(f, first, prev, bs, offs_k, k_mask, gw_ptr, gb_ptr, thr_ptr,
                           RULE, PROBABILITIES, INCLUSIVE)
    tl.store(score_ptr + b, score)
    tl.store(exit_ptr + b, exit_.to(tl.uint8))


@triton.jit
def _exit_gate_kernel(
    x_ptr, w_ptr, bias_ptr, first_ptr, prev_ptr, bs_ptr, gw_ptr, gb_ptr, thr_ptr,  # inputs
    feat_ptr, score_ptr, exit_ptr,  # outputs: (B, K) x.dtype, (B,) float32, (B,) uint8
    C, W, HW, K,
    s_xb, s_xc, s_xh, s_xw, s_wk, s_wc, s_first, s_prev,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_FIRST: tl.constexpr,
    HAS_PREV: tl.constexpr, HAS_BS: tl.constexpr, RULE: tl.constexpr,
    PROBABILITIES: tl.constexpr, INCLUSIVE: tl.constexpr, FLAT_HW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program per sample b: pool -> project -> decide -> threshold."""
    b = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + b * s_xb
    offs_c = tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    feat = tl.zeros([BLOCK_K], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + offs_c
        c_mask = c < C
        p = _pool_tile(x_row, c, c_mask, s_xc, W, HW, s_xh, s_xw, FLAT_HW, ACC, BLOCK_C, BLOCK_HW)  # (BLOCK_C,)
        if HAS_WEIGHT:
            w = tl.load(w_ptr + offs_k.to(tl.int64)[:, None] * s_wk + c.to(tl.int64)[None, :] * s_wc,
                        mask=k_mask[:, None] & c_mask[None, :], other=0.0).to(ACC)  # (BLOCK_K, BLOCK_C)
            feat += tl.sum(w * p[None, :], axis=1)
        else:
            # feat is p itself: place the tile at its channels (a select, so NaN stays put)
            hit = offs_k[:, None] == c[None, :]
            feat += tl.sum(tl.where(hit, p[None, :], 0.0), axis=1)
    if HAS_BIAS:
        feat += tl.load(bias_ptr + offs_k, mask=k_mask, other=0.0).to(ACC)
    feat = tl.where(k_mask, feat, 0.0)  # NaN * 0 reached the padded rows
    tl.store(feat_ptr + b * K + offs_k, feat.to(feat_ptr.dtype.element_ty), mask=k_mask)
    _decide_row(feat, b, first_ptr, prev_ptr, bs_ptr, gw_ptr, gb_ptr, thr_ptr, score_ptr, exit_ptr, s_first,
                s_prev, offs_k, k_mask, HAS_FIRST, HAS_PREV, HAS_BS, RULE, PROBABILITIES, INCLUSIVE, ACC)


@triton.jit
def _exit_gate_decide_kernel(
    feat_ptr, first_ptr, prev_ptr, bs_ptr, gw_ptr, gb_ptr, thr_ptr, score_ptr, exit_ptr,
    K, s_fb, s_fk, s_first, s_prev,
    HAS_FIRST: tl.constexpr, HAS_PREV: tl.constexpr, HAS_BS: tl.constexpr, RULE: tl.constexpr,
    PROBABILITIES: tl.constexpr, INCLUSIVE: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program per sample b: decide from feat[b]."""
    b = tl.program_id(0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    f = tl.load(feat_ptr + b * s_fb + offs_k.to(tl.int64) * s_fk, mask=k_mask, other=0.0).to(ACC)
    _decide_row(f, b, first_ptr, prev_ptr, bs_ptr, gw_ptr, gb_ptr, thr_ptr, score_ptr, exit_ptr, s_first,
                s_prev, offs_k, k_mask, HAS_FIRST, HAS_PREV, HAS_BS, RULE, PROBABILITIES, INCLUSIVE, ACC)


def _decision_args(first, previous, bias_share, gate_weight, gate_bias, rule, inclusive, K, placeholder):
    """The decision's pointer arguments (placeholder for absent ones) and its constexpr flags."""
    pointers = [t.contiguous() if t is not None else placeholder
                for t in (first, previous, bias_share, gate_weight, gate_bias)]
    flags = dict(HAS_FIRST=first is not None, HAS_PREV=previous is not None,
                 HAS_BS=bias_share is not None, RULE=RULES.index(rule),
                 PROBABILITIES=gate_weight is not None and gate_weight.shape[0] == SUMMARIES + K,
                 INCLUSIVE=inclusive)
    return pointers, flags


def exit_gate_forward(x, weight, bias, first, previous, bias_share, gate_weight, gate_bias,
                      threshold, rule, inclusive):
    """distree::exit_gate on one launch, grid (B,): feat (B, K) x.dtype, score (B,), exit (B,)."""
    B, C, H, W = x.shape
    K = C if weight is None else weight.shape[0]
    feat, score, exit_ = _outputs(x, K)
    if B == 0:
        return feat, score, exit_
    tiles = _pool_tiles(x)
    block_k = triton.next_power_of_2(max(K, 1))
    block_c = min(tiles.block_c, max(2 * _TILE // block_k, 1))
    (first_, prev_, bs_, gw_, gb_), flags = _decision_args(
        first, previous, bias_share, gate_weight, gate_bias, rule, inclusive, K, score)
    with _device_guard(x):
        _exit_gate_kernel[(B,)](
            x, weight if weight is not None else feat, bias if bias is not None else feat,
            first_, prev_, bs_, gw_, gb_, threshold,
            feat, score, exit_.view(torch.uint8),
            C, W, H * W, K,
            x.stride(0), x.stride(1), tiles.s_h, tiles.s_w,
            weight.stride(0) if weight is not None else 0, weight.stride(1) if weight is not None else 0,
            first_.stride(0) if first is not None else 0, prev_.stride(0) if previous is not None else 0,
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, **flags,
            FLAT_HW=tiles.flat, ACC=tiles.acc, BLOCK_C=block_c, BLOCK_HW=tiles.block_hw, BLOCK_K=block_k,
            num_warps=_num_warps(block_c * tiles.block_hw),
        )
    return feat, score, exit_


def exit_gate_decide(feat, first, previous, bias_share, gate_weight, gate_bias, threshold, rule,
                     inclusive):
    """distree::exit_gate_decide on one launch, grid (B,): score (B,) float32, exit (B,) bool."""
    B, K = feat.shape
    score = torch.empty((B,), dtype=torch.float32, device=feat.device)
    exit_ = torch.empty((B,), dtype=torch.bool, device=feat.device)
    if B == 0:
        return score, exit_
    _, acc = _acc_dtype(feat.dtype)
    (first_, prev_, bs_, gw_, gb_), flags = _decision_args(
        first, previous, bias_share, gate_weight, gate_bias, rule, inclusive, K, score)
    with _device_guard(feat):
        _exit_gate_decide_kernel[(B,)](
            feat, first_, prev_, bs_, gw_, gb_, threshold, score, exit_.view(torch.uint8),
            K, feat.stride(0), feat.stride(1),
            first_.stride(0) if first is not None else 0, prev_.stride(0) if previous is not None else 0,
            **flags, ACC=acc, BLOCK_K=triton.next_power_of_2(max(K, 1)),
        )
    return score, exit_
