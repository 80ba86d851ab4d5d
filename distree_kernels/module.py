"""ExitHead: the fused exit head as an nn.Module holding its projection and threshold."""
import math

import torch
from torch import nn

from .functional import exit_head


class ExitHead(nn.Module):
    """ReLU -> global average pool -> Linear(in_channels, out_features) -> 1/cos(feat, ref) > T.

    A drop-in replacement for the unfused head in training (feat is differentiable in the input,
    the weight and the bias) and in inference (score and exit stay on the device).
    out_features=None keeps the pooled feature itself (no projection, D = in_channels).
    """

    def __init__(self, in_channels: int, out_features: int | None = None, threshold: float = 1.0,
                 bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.in_channels, self.out_features, self.backend = in_channels, out_features, backend
        if out_features is None:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        else:
            self.weight = nn.Parameter(torch.empty(out_features, in_channels))
            self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
            self.reset_parameters()
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def set_threshold(self, value: float) -> None:
        """Sets T in place, so compiled graphs and CUDA graphs see the new value."""
        self.threshold.fill_(float(value))

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None):
        """x (B, C, H, W), ref (B, D) or None -> feat (B, D), score (B,), exit (B,)."""
        return exit_head(x, self.weight, self.bias, ref, self.threshold, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, backend={self.backend!r}")
