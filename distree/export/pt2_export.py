"""One student's walk as an AOTInductor package (.pt2): compiled C++, loadable without distree.

torch.export traces the walk (the stages' torch.cond stay conditionals in the compiled code);
AOTInductor compiles it ahead of time into a shared library inside the package. The fused ops
stay calls to the C++ kernel, so the loading process imports `distree_kernels` (which registers
torch.ops.distree.*) and nothing of `distree`:

    import torch, distree_kernels
    walk = torch._inductor.aoti_load_package("student0.pt2")
    u, exit = walk(x)  # x (1, C, H, W) float32 -> (1, K) float32, () int64
"""
from pathlib import Path

import torch

from distree.export.quiet import quiet


def export_pt2(walk: torch.nn.Module, x: torch.Tensor, path) -> Path:
    """Writes walk (a GraphWalk) traced on x (1, C, H, W) to path as an AOTInductor package."""
    path = Path(path)
    with torch.no_grad(), quiet():
        program = torch.export.export(walk, (x,))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path


def load_pt2(path):
    """The compiled walk of a package: callable x (1, C, H, W) -> (u (1, K), exit () int64)."""
    import distree_kernels  # noqa: F401  registers the C++ ops the package calls

    return torch._inductor.aoti_load_package(str(path))
