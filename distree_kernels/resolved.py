"""The exit head's and the exit gate's ops resolved once for a backend and a device.

`exit_head()`, `exit_gate()` and `ExitHead` resolve the backend at every call, which keeps them
right whatever the tensors and the module's `backend` are. A caller that runs the same heads
again and again at B = 1, where an op's own dispatch takes a few microseconds, can resolve them
once and call the ops directly, skipping the module call and the lookups around it: about 6 us
of the 22 us an exit cost beyond its stage at B = 1 on the CPU (the README's "What the exit machinery costs now").
"""
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import backends
from .exit_gate import implementation as gate_implementation


class ExitOps(NamedTuple):
    """One backend's ops, as `exit_head` and `exit_gate` call them after resolving it."""

    head: Callable  # (x, weight, bias, ref, threshold) -> (feat, score, exit)
    gate: Callable  # (x, weight, bias, first, previous, bias_share, gate_weight, gate_bias, threshold, rule,
    #                  inclusive) -> (feat, score, exit)


def exit_ops(backend: str, device: torch.device | str) -> ExitOps:
    """The ops `backend` ("auto" too) runs on tensors of `device`; an error where it cannot run there."""
    name = backends.resolve(backend, torch.device(device))
    return ExitOps(backends.implementation(name), gate_implementation(name, fused=True))
