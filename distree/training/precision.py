"""Mixed precision for training: `--amp off|bf16|fp16`.

bf16 and fp16 run the forward pass and the loss under torch.autocast (convolutions and matrix
products in the half type, reductions and the loss in float32); the weights, their gradients
and the optimizer stay float32. fp16 adds a gradient scaler, since its small gradients would
underflow. "off" is plain float32 and the default: a CPU run stays float32 unless asked; fp16 is
refused on a CPU (it is slow there and bf16 is the half type CPUs have).

The fused exit head has no autocast rule of its own (distree_kernels knows nothing of
training), and under autocast its input x arrives in the half type while its weight is
float32, which the op refuses. `exit_head_autocast` gives it one: x, weight, bias and ref in
autocast's type, the threshold float32 as the op requires. The op keeps its dtype rules
(pool, projection and cosine accumulate in float32; feat in x's type) and autograd carries
the weight's gradient back to float32 through the cast.
"""
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from distree.errors import DistreeError

AMP_MODES = ("off", "bf16", "fp16")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
EXIT_HEAD_OPS = ("exit_head", "exit_head_triton")  # the distree:: ops the heads' cpp, cuda and triton backends call


@dataclass(frozen=True)
class Precision:
    mode: str = "off"  # one of AMP_MODES
    device_type: str = "cpu"

    def autocast(self):
        """The context a forward pass and its loss run in."""
        if self.mode == "off":
            return nullcontext()
        exit_head_autocast()
        return torch.autocast(self.device_type, dtype=HALF[self.mode])

    def scaler(self) -> torch.amp.GradScaler:
        """The gradient scaler: working for fp16, a pass-through otherwise (scale, step and update do nothing extra)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.mode == "fp16")


def precision(mode: str, device: torch.device) -> Precision:
    """The precision of a run on a device, or a one-line error for a mode the device cannot use."""
    if mode not in AMP_MODES:
        raise DistreeError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode == "fp16" and device.type == "cpu":
        raise DistreeError("--amp fp16 needs a GPU; on a CPU use --amp bf16 or off")
    return Precision(mode, device.type)


_REGISTERED = []  # the torch.library fragment holding the rules, kept alive, once registered


def exit_head_autocast() -> None:
    """Registers the exit head's autocast rule (once per process) on the CPU and CUDA."""
    if _REGISTERED:
        return
    lib = torch.library.Library("distree", "FRAGMENT")
    for name in EXIT_HEAD_OPS:
        if not hasattr(torch.ops.distree, name):  # exit_head_triton exists only where Triton imports
            continue
        op = getattr(torch.ops.distree, name).default
        for device_type, key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
            lib.impl(name, _half_head(op, device_type), key)
    _REGISTERED.append(lib)


def _half_head(op, device_type: str):
    def run(x, weight, bias, ref, threshold):
        half = torch.get_autocast_dtype(device_type)
        cast = lambda t: None if t is None else t.to(half)  # noqa: E731
        with torch.autocast(device_type, enabled=False):  # below autocast: the op's own kernels
            return op(cast(x), cast(weight), cast(bias), cast(ref), threshold)
    return run
