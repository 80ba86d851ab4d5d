"""Triton backend of the fused exit head (the op: docs/exit_head.md).

The forward pass is a single kernel launch, one program per sample: it streams the sample's
(C, H*W) plane once, pooling relu(x) tile by tile, folds each pooled channel tile straight into
the projection, then takes the cosine against ``ref`` and the threshold test, so nothing but
(feat, score, exit) ever leaves the chip and nothing is read back to the host. The backward
pass is one kernel too, because it is the only pass over x that autograd needs: it writes
grad_x and recomputes the pooled vector p (needed for grad_weight) from the same loads.

Both kernels address x through its own strides, so contiguous, channels_last and sliced views
are read in place. Offsets are 64-bit (program ids and index vectors are widened before they
meet a stride), as in Liger-Kernel, so tensors past 2**31 elements are safe.

Accumulation is in float32, or float64 for float64 inputs (so ``gradcheck`` sees ~1e-12 error
rather than float32 rounding). The callers validate the inputs; these functions assume them.
"""
import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .dtypes import accumulation_dtype

# Upper bound on the elements of one register tile: x tiles are (BLOCK_C, BLOCK_HW), weight
# tiles (BLOCK_D, BLOCK_C). 4096 float32 values are 32 registers per thread at 4 warps.
_TILE = 4096
# H*W is tiled at most this wide so that small-C, large-H*W stages still tile C by more than 1.
_MAX_BLOCK_HW = 512


@triton.jit
def _hw_offsets(hw, W, s_h, s_w, FLAT_HW: tl.constexpr):
    """Element offsets of the flat spatial indices ``hw`` (int64) inside one (b, c) plane."""
    if FLAT_HW:
        # h and w merge into one axis of stride s_w: no division, and the compiler can see
        # contiguity (and vectorise) when s_w == 1.
        return hw * s_w
    return (hw // W) * s_h + (hw % W) * s_w


@triton.jit
def _pool_tile(x_row, c, c_mask, s_xc, W, HW, s_xh, s_xw, FLAT_HW: tl.constexpr, ACC: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """mean over H*W of relu(x) for one sample's channel tile c (BLOCK_C,): (BLOCK_C,) in ACC,
    0 on padded channels. Both ops' forward kernels pool through here."""
    c_off = c.to(tl.int64) * s_xc
    offs_hw = tl.arange(0, BLOCK_HW)
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    for hw0 in range(0, HW, BLOCK_HW):
        hw = hw0 + offs_hw
        hw_off = _hw_offsets(hw.to(tl.int64), W, s_xh, s_xw, FLAT_HW)
        mask = c_mask[:, None] & (hw < HW)[None, :]
        v = tl.load(x_row + c_off[:, None] + hw_off[None, :], mask=mask, other=0.0).to(ACC)
        # where(x < 0, 0, x) rather than maximum: relu(NaN) must stay NaN.
        acc += tl.where(v < 0, 0.0, v)
    return tl.sum(acc, axis=1) / HW


@triton.jit
def _inverse_cosine_of_sums(dot, uu, vv):
    """1 / cos from <u, v>, |u|^2 and |v|^2 with exit_head's rules (distree_kernels/exit_rules.py):
    1 where a norm is 0, +inf where cos <= 0, NaN where a sum is NaN; float32."""
    nu = tl.sqrt(uu)
    nv = tl.sqrt(vv)
    cos = dot / (nu * nv)
    score = tl.where(cos <= 0, float("inf"), 1.0 / cos)
    score = tl.where((nu == 0) | (nv == 0), 1.0, score)
    # NaN wins over every other rule (x != x is the NaN test).
    score = tl.where((dot != dot) | (nu != nu) | (nv != nv), float("nan"), score)
    return score.to(tl.float32)


@triton.jit
def _exit_head_forward_kernel(
    x_ptr, w_ptr, bias_ptr, ref_ptr, thr_ptr,  # inputs
    feat_ptr, score_ptr, exit_ptr,  # outputs: (B, D) x.dtype, (B,) float32, (B,) uint8
    C, W, HW, D,
    s_xb, s_xc, s_xh, s_xw,
    s_wd, s_wc, s_bias, s_rb, s_rd, s_fb,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_REF: tl.constexpr,
    FLAT_HW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per sample b: pool -> project -> cosine -> threshold."""
    b = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + b * s_xb
    feat_row = feat_ptr + b * s_fb
    ref_row = ref_ptr + b * s_rb
    offs_c = tl.arange(0, BLOCK_C)
    if HAS_WEIGHT:
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        feat = tl.zeros([BLOCK_D], dtype=ACC)  # (D,) accumulated over channel tiles
    elif HAS_REF:
        # Without a projection feat is p itself, finished tile by tile, so the cosine's sums
        # are accumulated per tile as well.
        dot_v = tl.zeros([BLOCK_C], dtype=ACC)
        uu_v = tl.zeros([BLOCK_C], dtype=ACC)
        vv_v = tl.zeros([BLOCK_C], dtype=ACC)

    for c0 in range(0, C, BLOCK_C):
        c = c0 + offs_c
        c_mask = c < C
        p = _pool_tile(x_row, c, c_mask, s_xc, W, HW, s_xh, s_xw, FLAT_HW, ACC, BLOCK_C, BLOCK_HW)  # (BLOCK_C,)

        if HAS_WEIGHT:
            w = tl.load(
                w_ptr + offs_d.to(tl.int64)[:, None] * s_wd + c.to(tl.int64)[None, :] * s_wc,
                mask=d_mask[:, None] & c_mask[None, :], other=0.0,
            ).to(ACC)  # (BLOCK_D, BLOCK_C)
            feat += tl.sum(w * p[None, :], axis=1)
        else:
            f = p
            if HAS_BIAS:
                f += tl.load(bias_ptr + c.to(tl.int64) * s_bias, mask=c_mask, other=0.0).to(ACC)
            tl.store(feat_row + c, f.to(feat_ptr.dtype.element_ty), mask=c_mask)
            if HAS_REF:
                # Padded channels hold f = r = 0 (masked loads), so they add nothing.
                r = tl.load(ref_row + c.to(tl.int64) * s_rd, mask=c_mask, other=0.0).to(ACC)
                dot_v += f * r
                uu_v += f * f
                vv_v += r * r

    if HAS_WEIGHT:
        if HAS_BIAS:
            feat += tl.load(bias_ptr + offs_d.to(tl.int64) * s_bias, mask=d_mask, other=0.0).to(ACC)
        # A NaN in p reaches the padded rows too (NaN * 0); clear them before the sums.
        feat = tl.where(d_mask, feat, 0.0)
        tl.store(feat_row + offs_d, feat.to(feat_ptr.dtype.element_ty), mask=d_mask)
        if HAS_REF:
            r = tl.load(ref_row + offs_d.to(tl.int64) * s_rd, mask=d_mask, other=0.0).to(ACC)
            dot = tl.sum(feat * r, axis=0)
            uu = tl.sum(feat * feat, axis=0)
            vv = tl.sum(r * r, axis=0)
    elif HAS_REF:
        dot = tl.sum(dot_v, axis=0)
        uu = tl.sum(uu_v, axis=0)
        vv = tl.sum(vv_v, axis=0)

    # The score comes from the unrounded accumulator-precision feat, not the stored one.
    if HAS_REF:
        score = _inverse_cosine_of_sums(dot, uu, vv)
    else:
        score = tl.full([], 1.0, tl.float32)
    tl.store(score_ptr + b, score)
    # Compare the stored float32 score so that exit is exactly `score > threshold` as returned;
    # NaN > T is false, so a NaN sample never exits.
    thr = tl.load(thr_ptr).to(tl.float32)
    tl.store(exit_ptr + b, (score > thr).to(tl.uint8))


@triton.jit
def _exit_head_backward_kernel(
    gp_ptr, x_ptr, gx_ptr, p_ptr,  # grad_p (B, C), x, grad_x (like x), p (B, C)
    C, W, HW,
    s_gpb, s_gpc,
    s_xb, s_xc, s_xh, s_xw,
    s_gxb, s_gxc, s_gxh, s_gxw,
    s_pb,
    FLAT_HW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """One program per (sample, channel tile): grad_x = (x > 0) * grad_p / HW, and p."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    offs_hw = tl.arange(0, BLOCK_HW)
    x_row = x_ptr + b * s_xb + c[:, None] * s_xc
    gx_row = gx_ptr + b * s_gxb + c[:, None] * s_gxc
    g = tl.load(gp_ptr + b * s_gpb + c * s_gpc, mask=c_mask, other=0.0).to(ACC) / HW
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    for hw0 in range(0, HW, BLOCK_HW):
        hw = hw0 + offs_hw
        hw64 = hw.to(tl.int64)
        mask = c_mask[:, None] & (hw < HW)[None, :]
        v = tl.load(x_row + _hw_offsets(hw64, W, s_xh, s_xw, FLAT_HW)[None, :], mask=mask,
                    other=0.0).to(ACC)
        # A 0/1 factor times g (not where(x > 0, g, 0)) keeps the reference's 0 * inf = NaN.
        gx = tl.where(v > 0, 1.0, 0.0) * g[:, None]
        tl.store(gx_row + _hw_offsets(hw64, W, s_gxh, s_gxw, FLAT_HW)[None, :],
                 gx.to(gx_ptr.dtype.element_ty), mask=mask)
        acc += tl.where(v < 0, 0.0, v)
    tl.store(p_ptr + b * s_pb + c, tl.sum(acc, axis=1) / HW, mask=c_mask)


def _acc_dtype(dtype):
    """The accumulation dtype (distree_kernels.dtypes) as (torch dtype, Triton dtype)."""
    acc = accumulation_dtype(dtype)
    return acc, (tl.float64 if acc == torch.float64 else tl.float32)


def _hw_stride(t):
    """The single stride of the merged (H, W) axis of a 4-D tensor, or None if they don't merge."""
    _, _, h, w = t.shape
    s_h, s_w = t.stride(2), t.stride(3)
    if h == 1:
        return s_w
    if w == 1:
        return s_h
    return s_w if s_h == w * s_w else None


def _spatial_args(*tensors):
    """(FLAT_HW, [(s_h, s_w) per tensor]): merge H and W only where every tensor allows it."""
    merged = [_hw_stride(t) for t in tensors]
    if all(s is not None for s in merged):
        return True, [(0, s) for s in merged]
    return False, [(t.stride(2), t.stride(3)) for t in tensors]


def _device_guard(t):
    """Launch on t's GPU rather than the current one (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _num_warps(tile):
    """8 warps for full-size tiles keep registers per thread near 32 floats; 4 otherwise."""
    return 8 if tile >= _TILE else 4


@dataclass
class PoolTiles:
    """How a forward kernel pools x: its accumulation dtype, spatial layout and tile sizes."""

    acc: object  # Triton dtype: tl.float32, or tl.float64 for float64 x
    flat: bool  # FLAT_HW: H and W merge into one axis
    s_h: int
    s_w: int
    block_hw: int
    block_c: int  # the widest channel tile the x tiles allow (a projection may ask for less)


def _pool_tiles(x) -> PoolTiles:
    """The pooling tiles of a forward pass over x (B, C, H, W): both ops' forward kernels use them."""
    _, C, H, W = x.shape
    _, acc = _acc_dtype(x.dtype)
    flat, [(s_h, s_w)] = _spatial_args(x)
    block_hw = min(triton.next_power_of_2(H * W), _MAX_BLOCK_HW)
    return PoolTiles(acc, flat, s_h, s_w, block_hw, min(triton.next_power_of_2(max(C, 1)), max(_TILE // block_hw, 1)))


def _outputs(x, D: int):
    """An exit op's outputs for x, not yet written: feat (B, D) x.dtype, score (B,) float32, exit (B,) bool."""
    B = x.shape[0]
    return (torch.empty((B, D), dtype=x.dtype, device=x.device), torch.empty((B,), dtype=torch.float32, device=x.device),
            torch.empty((B,), dtype=torch.bool, device=x.device))


def exit_head_forward(x, weight, bias, ref, threshold):
    """x (B, C, H, W), weight (D, C) or None, bias (D,) or None, ref (B, D) or None,
    threshold 0-d float32 -> feat (B, D) x.dtype, score (B,) float32, exit (B,) bool.

    One launch, grid (B,). feat's projection is held as a (BLOCK_D,) register vector, so D is
    meant to be modest (class counts, feature widths up to a few thousand).
    """
    B, C, H, W = x.shape
    D = C if weight is None else weight.shape[0]
    feat, score, exit_ = _outputs(x, D)
    if B == 0:
        return feat, score, exit_
    tiles = _pool_tiles(x)
    block_c = tiles.block_c
    block_d = triton.next_power_of_2(max(D, 1)) if weight is not None else 1
    if weight is not None:
        block_c = min(block_c, max(2 * _TILE // block_d, 1))
    # Absent optional tensors: pass feat as a placeholder pointer that the constexpr flags
    # never let the kernel touch.
    w_arg = weight if weight is not None else feat
    bias_arg = bias if bias is not None else feat
    ref_arg = ref if ref is not None else feat
    with _device_guard(x):
        _exit_head_forward_kernel[(B,)](
            x, w_arg, bias_arg, ref_arg, threshold,
            feat, score, exit_.view(torch.uint8),  # bool stored as bytes: same storage, no copy
            C, W, H * W, D,
            x.stride(0), x.stride(1), tiles.s_h, tiles.s_w,
            weight.stride(0) if weight is not None else 0,
            weight.stride(1) if weight is not None else 0,
            bias.stride(0) if bias is not None else 0,
            ref.stride(0) if ref is not None else 0,
            ref.stride(1) if ref is not None else 0,
            feat.stride(0),
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_REF=ref is not None,
            FLAT_HW=tiles.flat, ACC=tiles.acc,
            BLOCK_C=block_c, BLOCK_HW=tiles.block_hw, BLOCK_D=block_d,
            num_warps=_num_warps(block_c * tiles.block_hw),
        )
    return feat, score, exit_


def exit_head_backward(grad_p, x):
    """grad_p (B, C), x (B, C, H, W) -> grad_x (like x: dtype and memory format), p (B, C).

    grad_x = (x > 0) * grad_p / (H*W) and p = mean_hw relu(x), from one pass over x; grid
    (B, C / BLOCK_C). p is float32, or float64 when x is float64 (so grad_weight = g.T @ p
    keeps double precision under gradcheck).
    """
    B, C, H, W = x.shape
    grad_x = torch.empty_like(x)
    p_dtype, acc = _acc_dtype(x.dtype)
    p = torch.empty((B, C), dtype=p_dtype, device=x.device)
    if B == 0 or C == 0:
        return grad_x, p
    flat, [(s_xh, s_xw), (s_gxh, s_gxw)] = _spatial_args(x, grad_x)
    block_hw = min(triton.next_power_of_2(H * W), _MAX_BLOCK_HW)
    block_c = min(triton.next_power_of_2(C), max(_TILE // block_hw, 1))
    with _device_guard(x):
        _exit_head_backward_kernel[(B, triton.cdiv(C, block_c))](
            grad_p, x, grad_x, p,
            C, W, H * W,
            grad_p.stride(0), grad_p.stride(1),
            x.stride(0), x.stride(1), s_xh, s_xw,
            grad_x.stride(0), grad_x.stride(1), s_gxh, s_gxw,
            p.stride(0),
            FLAT_HW=flat, ACC=acc,
            BLOCK_C=block_c, BLOCK_HW=block_hw,
            num_warps=_num_warps(block_c * block_hw),
        )
    return grad_x, p
