"""N students and the aggregator that combines what they send: one model object for training.

In the class space the aggregator is z = sum_i u_i + b: NoNN's linear classifier on the
concatenated pooled features, factored per student. In the `projected` space it is
z = W [u_1; ...; u_N] + b with W of shape (K, N*D).
"""
import torch
from torch import nn

from distree.models.student import Student


class DistrEEModel(nn.Module):
    def __init__(self, students: list[Student], num_classes: int):
        super().__init__()
        self.students = nn.ModuleList(students)
        self.bias = nn.Parameter(torch.zeros(num_classes))  # (K,)
        exit_space = students[0].exit_space
        dim = students[0].heads[0].weight.shape[0]  # K, or D if projected
        self.proj = nn.Linear(len(students) * dim, num_classes, bias=False) if exit_space == "projected" else None

    def aggregate(self, u_sel: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) from the features u_sel (N, B, K) (or (N, B, D)) the students send."""
        if self.proj is None:
            return u_sel.sum(0) + self.bias  # (B, K)
        return self.proj(u_sel.transpose(0, 1).flatten(1)) + self.bias  # (B, N*D) -> (B, K)

    def contributions(self, u_sel: torch.Tensor) -> torch.Tensor:
        """What each student adds to the logits (N, B, K), from the features u_sel (N, B, K) (or (N, B, D)):
        aggregate(u_sel) is their sum plus the bias, up to rounding in the projected space."""
        if self.proj is None:
            return u_sel
        n, _, d = u_sel.shape
        w = self.proj.weight.view(-1, n, d).transpose(0, 1)  # (N, K, D): student i's columns of proj
        return torch.einsum("nbd,nkd->nbk", u_sel, w)  # (N, B, K)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """u (N, 7, B, K): every student's feature at every exit; maps[i][j]: student i's stage j output."""
        outs = [student(x) for student in self.students]
        u = torch.stack([torch.stack(ui) for ui, _ in outs])  # (N, 7, B, K)
        return u, [maps for _, maps in outs]
