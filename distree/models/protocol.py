"""What the inference engine, evidence collection, FLOP counting and the runtime's devices need of a
model: the protocol a user's own network follows to run under distree's exit policies.

A model holds N students and an aggregator. Each student runs in NUM_EXITS steps, with a
`distree_kernels.ExitHead` after each; `walk(x)` runs them one at a time (`StudentWalk` does this
for any student with `stages` and `heads`). The aggregator sums what the students send:
logits = aggregate(u (N, B, K)), which for the class space is sum_i u_i + bias. `DistrEEModel`
wraps any list of such students; `examples/own_model.py` builds one from a small ResNet.
"""
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from distree.errors import DistreeError
from distree.models.student import NUM_EXITS
from distree_kernels import ExitHead


class ExitWalk(Protocol):
    """A stage-by-stage run of one student (see `distree.models.student.StudentWalk`)."""

    h: torch.Tensor  # (B', C_j, H_j, W_j) output of the step just run
    first: torch.Tensor | None  # (B', K) exit 1's feature once its head has run
    previous: torch.Tensor | None  # (B', K) the feature of the exit before the current one

    def __iter__(self) -> Iterator[int]: ...  # runs the next step, yields its 0-based exit index 0..NUM_EXITS-1

    def head(self, score: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...  # (B', K), (B',), (B',)

    def decide(self, bias_share, gate_weight, gate_bias, threshold, rule: str,
               inclusive: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...  # the exit gate's (B', K), (B',), (B',)

    def keep(self, rows: torch.Tensor) -> None: ...  # go on with the samples rows (B'',) only


@runtime_checkable
class EarlyExitStudent(Protocol):
    stages: nn.ModuleList  # NUM_EXITS modules, run in order
    heads: nn.ModuleList  # NUM_EXITS ExitHead(C_j, K, bias=False): exit j reads stage j's output
    exit_space: str  # "class": heads give K class-evidence values

    def walk(self, x: torch.Tensor) -> ExitWalk: ...

    def parameters(self): ...


@runtime_checkable
class EarlyExitModel(Protocol):
    students: Sequence[EarlyExitStudent]  # an nn.ModuleList
    bias: torch.Tensor  # (K,) the aggregator's bias

    def aggregate(self, u_sel: torch.Tensor) -> torch.Tensor: ...  # (N, B, K) -> logits (B, K)


def check_model(model, sample: torch.Tensor) -> None:
    """A DistreeError saying what is missing if `model` does not follow the protocol on sample (1, C, H, W)."""
    if not isinstance(model, EarlyExitModel):
        raise DistreeError("a model needs `students`, `bias` and `aggregate(u)`; see distree/models/protocol.py")
    for i, student in enumerate(model.students):
        if not isinstance(student, EarlyExitStudent):
            raise DistreeError(f"student {i} needs `stages`, `heads`, `exit_space` and `walk(x)`")
        if len(student.stages) != NUM_EXITS or len(student.heads) != NUM_EXITS:
            raise DistreeError(f"student {i} has {len(student.stages)} stages and {len(student.heads)} heads; "
                               f"the policies need {NUM_EXITS} of each")
        if not all(isinstance(h, ExitHead) for h in student.heads):
            raise DistreeError(f"student {i}'s heads must be distree_kernels.ExitHead")
        with torch.no_grad():
            walk = student.walk(sample)
            exits = [j for j in walk if walk.head()[0].shape == (len(sample), model.bias.shape[0])]
        if exits != list(range(NUM_EXITS)):
            raise DistreeError(f"student {i}'s walk must yield exits 0..{NUM_EXITS - 1} with (B, K) features; "
                               f"got {exits}")
