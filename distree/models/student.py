"""The student: a WRN-16-k with an exit after the stem and after each of its 6 blocks.

Exit j's head is the fused `distree_kernels.ExitHead`: ReLU, global average pool and a linear
map to K class-evidence values (no bias: the aggregator holds the one bias), so every exit of
every student speaks the same language and can be summed at the aggregator.
"""
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from distree.errors import DistreeError
from distree.models.wrn import init_weights, wrn_blocks
from distree_kernels import ExitHead, ExitOps, exit_ops

NUM_EXITS = 7  # after the stem and after each of the 6 blocks
LAST_EXIT = NUM_EXITS - 1  # 0-based index of exit 7, where every sample stops
EXIT_SPACES = ("class", "projected")
PROJECTED_DIM = 64  # D of the `projected` alternative


class ExitKernel(NamedTuple):
    """An exit's head as its ops take it, for one device: the resolved ops and the head's tensors."""

    ops: ExitOps
    weight: torch.Tensor | None  # (K, C_j)
    bias: torch.Tensor | None  # (K,)
    threshold: torch.Tensor  # () float32

    @classmethod
    def of(cls, head: ExitHead, device: torch.device) -> "ExitKernel":
        """head resolved for tensors on device: its backend's ops and its tensors as they are now."""
        return cls(exit_ops(head.backend, device), head.weight, head.bias, head.threshold)


@dataclass
class StudentConfig:
    width: int = 1  # WRN-16-k widening factor
    exit_space: str = "class"  # "class": K evidence values per exit; "projected": D = 64, Linear(N*D -> K) after
    head_backend: str = "auto"  # distree_kernels backend of the heads; "reference" is the unfused PyTorch head


class StagedStudent(nn.Module):
    """A student as NUM_EXITS `stages` with a fused ExitHead after each (`heads`): subclasses build
    the two lists, and get the walk the engine and devices use and a forward for training."""

    stages: nn.ModuleList
    heads: nn.ModuleList

    def walk(self, x: torch.Tensor, kernels: list[ExitKernel] | None = None) -> "StudentWalk":
        """A stage-by-stage run of this student on x (B, C, H, W); see StudentWalk. kernels: the
        `exit_kernels` of x's device, for a caller that walks many times (DeviceStep); None: the heads
        run as modules and each exit's gate is resolved when it decides."""
        return StudentWalk(self, x, kernels)

    def exit_kernels(self, device: torch.device) -> list[ExitKernel]:
        """Every exit's kernel for device. They hold the heads' backends and tensors of this moment:
        take them again after `set_head_backend`, or after moving or replacing the heads' parameters.
        A walk given them calls the ops directly, so hooks on the head modules do not run."""
        return [ExitKernel.of(head, device) for head in self.heads]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """u: 7 features (B, K) (or (B, D) if projected); maps: the 7 stage outputs (B, C_j, H_j, W_j)."""
        u, maps = [], []
        walk = self.walk(x)
        for _ in walk:
            maps.append(walk.h)
            u.append(walk.head(score=False)[0])  # (B, K)
        return u, maps


class Student(StagedStudent):
    """WRN-16-width with 7 exits; forward gives every exit's feature and every stage's map."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 1, depth: int = 16,
                 exit_space: str = "class", head_backend: str = "auto"):
        super().__init__()
        if depth != 16:
            raise DistreeError(f"a student is a WRN-16 (7 exits), got depth {depth}")
        if exit_space not in EXIT_SPACES:
            raise DistreeError(f"exit_space must be one of {', '.join(EXIT_SPACES)}, got {exit_space!r}")
        layers, widths = wrn_blocks(depth, width, in_channels)
        self.stages = nn.ModuleList(layers)
        if exit_space == "class":
            self.heads = nn.ModuleList(ExitHead(c, num_classes, bias=False, backend=head_backend) for c in widths)
        else:
            self.heads = nn.ModuleList(ExitHead(c, PROJECTED_DIM, backend=head_backend) for c in widths)
        self.exit_space, self.exit_widths = exit_space, widths
        init_weights(self)

    def set_head_backend(self, backend: str) -> None:
        for head in self.heads:
            head.backend = backend


def select_rows(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """h[keep] along the batch, keeping h's memory layout: index_select alone returns NCHW, and
    the channels_last convolutions that follow would pay a conversion of every activation."""
    if h.dim() == 4 and h.is_contiguous(memory_format=torch.channels_last):
        return h.permute(0, 2, 3, 1).index_select(0, keep).permute(0, 3, 1, 2)  # (b', C, H, W) channels_last
    return h.index_select(0, keep)


class StudentWalk:
    """The one way through a student: iterating runs the next stage and yields its exit index.

    After each stage, `h` holds its output (B', C_j, H_j, W_j). `head()` runs that exit's head,
    and `decide(...)` runs the fused exit gate instead: the same feature plus a local rule's
    exit decision, in one pass, left on the device. Both compare against exit 1's feature
    (`first`) and the feature of the exit before (`previous`), which the walk keeps. A caller
    runs only the heads it needs; `keep(rows)` drops the other samples from the batch before
    the next stage, so a sample that has exited costs nothing more. Training, evidence, the
    engine, the runtime's devices, timing and FLOP counting all walk a student this way.
    """

    def __init__(self, student: StagedStudent, x: torch.Tensor, kernels: list[ExitKernel] | None = None):
        self.student, self.h, self.exit = student, x, -1
        self.kernels = kernels  # per exit, for x's device: the heads' ops called directly; None: the modules
        self.exit_head = None  # the current exit's head (a ModuleList lookup costs microseconds at B = 1)
        self.first = None  # (B', K) exit 1's feature, once its head has run
        self.previous = None  # (B', K) the feature of the exit before the current one
        self.last = None  # (B', K) the feature of the latest head that ran

    def __iter__(self) -> Iterator[int]:
        for j, (stage, head) in enumerate(zip(self.student.stages, self.student.heads)):
            self.exit, self.exit_head, self.h = j, head, stage(self.h)  # h (B', C_j, H_j, W_j)
            yield j

    def head(self, score: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This exit's head on h: feature (B', K), score (B',) against exit 1 and the op's exit (B',).

        score=False skips the comparison with exit 1 (training needs the feature only). Without
        kernels the head module runs, so its hooks and per-module tools (FlopCounterMode's
        per-module counts) see it.
        """
        ref = self.first if score else None
        if self.kernels is None:
            return self._record(self.exit_head(self.h, ref))
        k = self.kernels[self.exit]
        return self._record(k.ops.head(self.h, k.weight, k.bias, ref, k.threshold))

    def decide(self, bias_share, gate_weight, gate_bias, threshold, rule: str, inclusive: bool):
        """The fused exit gate on h: feature (B', K), score (B',) and the rule's stop mask (B',).

        bias_share (K,), gate_weight (F,) and gate_bias () as `distree_kernels.exit_gate` takes
        them, gate_bias a tensor or None; threshold a 0-d float32 tensor on h's device.
        """
        k = self.kernels[self.exit] if self.kernels is not None else ExitKernel.of(self.exit_head, self.h.device)
        previous = self.last if self.last is not None else self.first
        return self._record(k.ops.gate(self.h, k.weight, k.bias, self.first, previous, bias_share, gate_weight,
                                       gate_bias, threshold, rule, inclusive))

    def _record(self, out):
        if self.exit == 0:
            self.first = out[0]
        self.previous, self.last = self.last, out[0]
        return out

    def keep(self, rows: torch.Tensor) -> None:
        """Goes on with the samples rows (B'',) of the current batch only."""
        self.h = select_rows(self.h, rows)
        self.first, self.previous, self.last = (None if t is None else t[rows]
                                                for t in (self.first, self.previous, self.last))
