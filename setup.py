"""Builds distree_kernels._C: the C++ CPU op always, the CUDA kernels when they can be built.

DISTREE_BUILD_CUDA=1 forces the CUDA sources in, =0 leaves them out; unset, they are built
when the installed torch has CUDA and nvcc is found.
"""
import glob
import os

from setuptools import setup
from torch.utils import cpp_extension


def want_cuda() -> bool:
    forced = os.environ.get("DISTREE_BUILD_CUDA")
    if forced is not None:
        return forced == "1"
    return cpp_extension.torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    sources = sorted(glob.glob("csrc/*.cpp"))
    # -fopenmp: without it ATen's parallel_for (a header template) compiles to one thread.
    cxx = ["-O3", "-fopenmp", "-march=native", "-DPy_LIMITED_API=0x03090000"]
    kwargs = dict(extra_link_args=["-fopenmp"], py_limited_api=True)
    if want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-std=c++17"]
        return cpp_extension.CUDAExtension(
            "distree_kernels._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return cpp_extension.CppExtension(
        "distree_kernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
