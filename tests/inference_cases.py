"""Tiny models and synthetic evidence shared by the inference, policy, cost and report tests."""
import torch

from distree.costs import FlopTable
from distree.inference.evidence import Evidence
from distree.models.distree_model import DistrEEModel
from distree.models.student import Student

N, K = 2, 10


def tiny_model(seed: int = 0, in_channels: int = 1) -> DistrEEModel:
    """Two untrained WRN-16-1 students (random weights, eval mode): real structure, tiny inputs."""
    torch.manual_seed(seed)
    model = DistrEEModel([Student(K, in_channels) for _ in range(N)], K).eval()
    with torch.no_grad():
        model.bias.normal_()
    return model


def tiny_batch(b: int = 12, in_channels: int = 1, size: int = 16, seed: int = 0):
    """Inputs (b, C, size, size) and sample ids (b,)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, in_channels, size, size, generator=g), torch.arange(b)


def synthetic_evidence(b: int = 2000, seed: int = 0) -> Evidence:
    """Evidence whose later exits and more confident samples are more often right."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (b,), generator=g)  # (B,)
    strength = torch.linspace(0.3, 3, 7).view(1, 7, 1, 1) * torch.rand(1, 1, b, 1, generator=g) * 2
    u = torch.nn.functional.one_hot(labels, K) * strength + torch.randn(N, 7, b, K, generator=g)  # (N, 7, B, K)
    cos = torch.nn.functional.cosine_similarity(u, u[:, :1], dim=-1)  # (N, 7, B)
    score = torch.where(cos <= 0, torch.full_like(cos, torch.inf), 1 / cos)
    bias = torch.randn(K, generator=g) * 0.1
    return Evidence(u, score, bias / N, torch.arange(b), lambda s: s.sum(0) + bias, labels)


def synthetic_flops() -> FlopTable:
    """The WRN-16-1 proportions (MFLOPs per stage of a 1-channel 32x32 input), heads of 2 * C * K."""
    stage = torch.tensor([0.3, 9.4, 9.4, 7.3, 9.4, 7.3, 9.4], dtype=torch.float64).repeat(N, 1) * 1e6
    head = torch.tensor([16, 16, 16, 32, 32, 64, 64], dtype=torch.float64).repeat(N, 1) * 2 * K
    return FlopTable(stage, head, 0.0)
