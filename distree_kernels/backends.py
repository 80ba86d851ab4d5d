"""Which exit-head backends can run where, and why the others cannot.

`auto` picks, per device, the fastest backend measured in benches/: the C++ kernel on the CPU;
on CUDA the CUDA kernel, then Triton (their GPU ranking is unmeasured until gpu_check.sh runs).
"""
import os

import torch

from . import ops
from .reference import exit_head_reference

BACKENDS = ("reference", "cpp", "cuda", "triton")
_AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}


def _has_cuda_kernel() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("distree::exit_head", "CUDA")


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """None when `backend` runs on tensors of `device`, else a sentence saying why not."""
    device_type = torch.device(device).type
    if backend == "reference":
        return None
    if backend in ("cpp", "cuda") and ops.EXTENSION_ERROR is not None:
        return (f"the C++ extension distree_kernels._C is not built ({ops.EXTENSION_ERROR}); "
                "build it with `pip install --no-build-isolation -e .`")
    if backend == "cpp":
        return None if device_type == "cpu" else f"backend 'cpp' runs on CPU tensors, not {device_type}"
    if backend == "cuda":
        if device_type != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, not {device_type}"
        if not _has_cuda_kernel():
            return "the extension was built without CUDA (set DISTREE_BUILD_CUDA=1 and rebuild)"
        return None
    if backend == "triton":
        if ops.TRITON_ERROR is not None:
            return f"Triton is not importable ({ops.TRITON_ERROR})"
        if device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return f"backend 'triton' runs on CUDA tensors (or any tensor under TRITON_INTERPRET=1), not {device_type}"
    raise ValueError(f"exit_head: unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that run on tensors of `device`."""
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


# resolve() is on the hot path of every call and its answers never change. (A dict rather than
# functools.lru_cache, which torch.compile warns about when it traces a call.) torch.compile
# takes its answer as a constant instead of tracing the lookup: a traced lookup guards on the
# dict's contents, which the first call changes, so every compiled model would compile twice.
_RESOLVED: dict[tuple[str, torch.device], str] = {}


@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device) -> str:
    """The backend to run: `backend` itself if it can run on `device`, or auto's choice."""
    key = (backend, device)
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve(backend, device)
    return _RESOLVED[key]


def _resolve(backend: str, device: torch.device) -> str:
    if backend == "auto":
        for name in _AUTO_ORDER.get(device.type, ("reference",)):
            if unavailable_reason(name, device) is None:
                return name
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"exit_head: backend {backend!r} is unavailable: {reason}")
    return backend


def implementation(backend: str):
    """The callable (x, weight, bias, ref, threshold) -> (feat, score, exit) of a backend."""
    if backend == "reference":
        return exit_head_reference
    if backend in ("cpp", "cuda"):
        return torch.ops.distree.exit_head.default
    return torch.ops.distree.exit_head_triton.default
