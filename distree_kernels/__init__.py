"""distree_kernels: the fused exit-head op (ReLU, pool, projection, cosine score, threshold) and
the fused exit gate (the same feature and a local exit rule's decision, in one pass).

Backends: reference (plain PyTorch), cpp (C++ CPU kernel), cuda (CUDA C++), triton.
"""
import warnings

from . import ops
from .backends import available_backends, unavailable_reason
from .exit_gate import exit_gate, exit_gate_decide
from .exit_gate_reference import exit_gate_decide_reference, exit_gate_reference
from .functional import exit_head
from .module import ExitHead
from .reference import exit_head_reference
from .resolved import ExitOps, exit_ops

if ops.EXTENSION_ERROR is not None:
    warnings.warn("distree_kernels: the C++ extension is not built, so the 'cpp' and 'cuda' backends "
                  f"are unavailable and 'auto' uses 'reference' on the CPU ({ops.EXTENSION_ERROR}). "
                  "Build it with `pip install --no-build-isolation -e .`.", stacklevel=2)

__all__ = ["ExitHead", "exit_head", "exit_head_reference", "exit_gate", "exit_gate_decide",
           "exit_gate_reference", "exit_gate_decide_reference", "available_backends", "unavailable_reason",
           "ExitOps", "exit_ops"]
