"""Checks a CUDA build of distree_kernels._C: every C++ op has its CUDA kernel registered.

Runs without a GPU (registration happens when the library loads; nothing is launched): this
is what `make cuda-build` runs against the CUDA torch. With a CPU-only torch, as in the venv
of `make test`, there is no CUDA build to check and the whole file is skipped.
"""
import re
import subprocess

import pytest
import torch

if torch.version.cuda is None:
    pytest.skip(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None); "
                "`make cuda-build` runs these checks", allow_module_level=True)

from distree_kernels import _C  # noqa: E402  loading the library registers torch.ops.distree.*


def cpp_ops():
    """The distree ops with a CPU kernel registered from C++ (TORCH_LIBRARY_IMPL).

    Left out: ops registered from Python (the Triton custom ops: a CompositeExplicitAutograd
    kernel, or a CPU one registered from Python code) and helpers defined with a catch-all
    kernel and no device kernels (_parallel_threads: CompositeImplicitAutograd).
    """
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("distree::"))
    return [n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")
            and CPP_SOURCE.search(torch._C._dispatch_dump(n))]


# The dispatcher's dump gives each kernel's registration site; a C++ one is __FILE__:__LINE__.
CPP_SOURCE = re.compile(r"^CPU: registered at \S+\.(cpp|cc|cxx|cu):\d+", re.MULTILINE)

OPS = cpp_ops()


def test_library_has_cpp_ops():
    assert "distree::exit_head" in OPS, f"C++ ops with a CPU kernel: {OPS}"


@pytest.mark.parametrize("name", OPS)
def test_cuda_kernel_registered(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), (
        f"{name} has a CPU kernel but no CUDA kernel in {_C.__file__}:\n"
        + torch._C._dispatch_dump(name))


def test_library_links_cuda_runtime():
    """The library was built with nvcc's runtime (not a CPU build picked up by mistake)."""
    dynamic = subprocess.run(["readelf", "-d", _C.__file__], capture_output=True, text=True,
                             check=True).stdout
    needed = [line.split("[")[-1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert any(lib.startswith("libcudart.so") for lib in needed), (
        f"{_C.__file__} does not link libcudart; it needs: {needed}")
