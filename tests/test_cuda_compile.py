"""Compiles every csrc/cuda/*.cu with bare nvcc for Ampere and Hopper.

The kernels need only CUDA headers, so this catches compile errors and warnings on machines
whose torch is CPU-only (where setup.py leaves the CUDA sources out). About 4 s a file; not
marked slow on purpose, so that every plain `pytest` run covers it.
"""
import pathlib
import shutil
import subprocess

import pytest

CUDA_DIR = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
ARCHS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source, tmp_path):
    cmd = [NVCC, "-c", "-std=c++17", *ARCHS, "-Xcompiler", "-Wall", "-o", str(tmp_path / "k.o"),
           str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr}"
    assert "warning" not in result.stderr.lower(), result.stderr


def test_cuda_sources_exist():
    assert SOURCES, f"no .cu files under {CUDA_DIR}"
