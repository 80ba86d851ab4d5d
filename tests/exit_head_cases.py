"""Backends, devices and input builders for the exit-head tests: each check is written once
and runs for every (backend, device) pair that this machine can run."""
import pytest
import torch

import distree_kernels
from distree_kernels import unavailable_reason

PAIRS = [("reference", "cpu"), ("cpp", "cpu"), ("triton", "cpu"),
         ("reference", "cuda"), ("cuda", "cuda"), ("triton", "cuda")]


def _param(backend, device):
    if device == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA GPU"
    elif backend == "triton" and device == "cpu" and torch.cuda.is_available():
        reason = "Triton runs on the GPU here, not in the CPU interpreter"
    else:
        reason = unavailable_reason(backend, device)
    marks = [pytest.mark.skip(reason=reason)] if reason else []
    return pytest.param(backend, device, id=f"{backend}-{device}", marks=marks)


BACKEND_PARAMS = [_param(b, d) for b, d in PAIRS]
backends = pytest.mark.parametrize("backend,device", BACKEND_PARAMS)


def make_x(B, C, H, W, layout="contiguous", dtype=torch.float32, device="cpu", seed=0):
    """A (B, C, H, W) input in the given memory layout: contiguous, channels_last or sliced."""
    g = torch.Generator().manual_seed(seed)
    if layout == "sliced":  # a strided view: every other channel, rows and columns cut
        big = torch.randn(B, 2 * C, H + 1, W + 2, generator=g)
        x = big.to(device=device, dtype=dtype)[:, ::2, 1:, 1:-1]
        assert x.shape == (B, C, H, W)
        return x
    x = torch.randn(B, C, H, W, generator=g).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def make_args(B, C, H, W, D, bias, ref, layout="contiguous", dtype=torch.float32, device="cpu", seed=0):
    """(x, weight, bias, ref) for one case; D=None means no projection."""
    g = torch.Generator().manual_seed(seed + 1)
    x = make_x(B, C, H, W, layout, dtype, device, seed)
    width = C if D is None else D
    w = None if D is None else (torch.randn(D, C, generator=g) / C ** 0.5).to(device=device, dtype=dtype)
    b = None if (D is None or not bias) else torch.randn(D, generator=g).to(device=device, dtype=dtype)
    r = None if not ref else torch.randn(B, width, generator=g).abs().to(device=device, dtype=dtype)
    return x, w, b, r


def run(backend, x, w=None, b=None, r=None, threshold=1.0):
    return distree_kernels.exit_head(x, w, b, r, threshold, backend=backend)
