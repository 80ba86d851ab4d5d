"""Builds distree_kernels._C: the C++ CPU op always, the CUDA kernels when they can be built.

DISTREE_BUILD_CUDA=1 forces the CUDA sources in, =0 leaves them out; unset, they are built
when the installed torch has CUDA and a CUDA toolkit is found (see find_cuda_home).
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default below: no GPU is needed to build).
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import setup
from torch.utils import cpp_extension

# Ampere and Hopper. Set explicitly because a machine without a GPU has none to detect, and
# torch's fallback (every architecture it supports) multiplies the nvcc time.
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def is_toolkit(root):
    """Whether root is a CUDA toolkit torch can build with: its headers and nvcc are there."""
    return bool(root) and all(os.path.isfile(os.path.join(root, *p)) for p in
                              (("include", "cuda_runtime.h"), ("bin", "nvcc")))


def nvcc_top(nvcc):
    """The toolkit root nvcc itself reports (TOP= in `nvcc --dryrun -v`), or None.

    This sees through wrapper scripts and symlinks alike: it is the real nvcc that answers.
    """
    cmd = [nvcc, "--dryrun", "-v", "-x", "cu", "-c", os.devnull, "-o", os.devnull]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stderr + out.stdout, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


def find_cuda_home():
    """(the CUDA toolkit root or None, the places looked at, for the error message).

    torch guesses dirname(dirname(which nvcc)), wrong when the nvcc on the PATH is a wrapper
    outside the toolkit (/usr/local/bin/nvcc gives /usr/local, which has no cuda_runtime.h).
    Order: $CUDA_HOME or $CUDA_PATH (when set, the only candidate: explicit wins), the root
    nvcc reports, the resolved nvcc's grandparent folder, /usr/local/cuda.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates = [(f"${var}", os.environ[var])]
            break
    else:
        nvcc = shutil.which("nvcc")
        candidates = [("nvcc on PATH", None)] if nvcc is None else [
            ("nvcc --dryrun TOP", nvcc_top(nvcc)),
            ("realpath(nvcc)/../..", os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))]
        candidates.append(("default", "/usr/local/cuda"))
    root = next((root for _, root in candidates if is_toolkit(root)), None)
    return root, [f"{how}={root}" for how, root in candidates]


def want_cuda() -> bool:
    """Whether to build the CUDA kernels; when so, points torch's cpp_extension at the toolkit.

    cpp_extension computed its CUDA_HOME at import, before this runs, so both its module
    global (read at build time) and the environment (for child processes) are set here.
    """
    forced = os.environ.get("DISTREE_BUILD_CUDA")
    if forced is not None and forced != "1":
        return False
    if cpp_extension.torch.version.cuda is None:
        if forced:
            raise SystemExit(f"setup.py: DISTREE_BUILD_CUDA=1 but torch "
                             f"{cpp_extension.torch.__version__} is a CPU-only build")
        return False
    root, looked = find_cuda_home()
    if root is None:
        if forced:
            raise SystemExit("setup.py: DISTREE_BUILD_CUDA=1 but no CUDA toolkit "
                             "(include/cuda_runtime.h and bin/nvcc) found; looked at: "
                             + ", ".join(looked) + "; set CUDA_HOME to the toolkit")
        return False
    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = root
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    return True


def extension(cuda):
    sources = sorted(glob.glob("csrc/*.cpp"))
    # Headers are listed so that a changed one rebuilds (setuptools compares only these).
    depends = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/cuda/*.cuh"))
    # -fopenmp: without it ATen's parallel_for (a header template) compiles to one thread.
    cxx = ["-O3", "-fopenmp", "-march=native", "-DPy_LIMITED_API=0x03090000"]
    kwargs = dict(extra_link_args=["-fopenmp"], py_limited_api=True, depends=depends)
    if cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "-std=c++17"]
        return cpp_extension.CUDAExtension(
            "distree_kernels._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return cpp_extension.CppExtension(
        "distree_kernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


CUDA = want_cuda()
# One build folder per torch and variant: setuptools skips an extension whose output is newer
# than its sources, so a shared build/ would hand one venv's library (say the CPU torch 2.13
# one) to another torch's install. (Editable installs build in temporary folders anyway.)
BUILD_BASE = f"build/torch-{cpp_extension.torch.__version__}-{'cuda' if CUDA else 'cpu'}"

setup(
    ext_modules=[extension(CUDA)],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"build": {"build_base": BUILD_BASE}, "bdist_wheel": {"py_limited_api": "cp39"}},
)
