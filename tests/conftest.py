"""Test set-up shared by every test file.

Triton runs its kernels on CPU tensors only in interpreter mode, which must be switched on
before triton is first imported; on a machine with a GPU the real kernels run instead.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
