"""The student: a WRN-16-k with an exit after the stem and after each of its 6 blocks.

Exit j's head is the fused `distree_kernels.ExitHead`: ReLU, global average pool and a linear
map to K class-evidence values (no bias: the aggregator holds the one bias), so every exit of
every student speaks the same language and can be summed at the aggregator.
"""
from dataclasses import dataclass

import torch
from torch import nn

from distree.errors import DistreeError
from distree.models.wrn import init_weights, wrn_blocks
from distree_kernels import ExitHead

EXIT_SPACES = ("class", "projected")
PROJECTED_DIM = 64  # D of the `projected` alternative


@dataclass
class StudentConfig:
    width: int = 1  # WRN-16-k widening factor
    exit_space: str = "class"  # "class": K evidence values per exit; "projected": D = 64, Linear(N*D -> K) after
    head_backend: str = "auto"  # distree_kernels backend of the heads; "reference" is the unfused PyTorch head


class Student(nn.Module):
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

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """u: 7 features (B, K) (or (B, D) if projected); maps: the 7 stage outputs (B, C_j, H_j, W_j)."""
        u, maps = [], []
        for stage, head in zip(self.stages, self.heads):
            x = stage(x)  # (B, C_j, H_j, W_j)
            maps.append(x)
            u.append(head(x)[0])  # (B, K)
        return u, maps
