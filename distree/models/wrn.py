"""Pre-activation WideResNet (Zagoruyko & Komodakis, "Wide Residual Networks", 2016).

A stem 3x3 conv of 16 channels, 3 groups of (depth - 4) / 6 basic blocks of widths 16k, 32k, 64k
and strides 1, 2, 2, then BN-ReLU, global average pool and a linear classifier.
"""
from dataclasses import dataclass

import torch
from torch import nn

from distree.errors import DistreeError


@dataclass
class WRNConfig:
    depth: int = 16  # 6n + 4 layers: n basic blocks per group
    width: int = 4  # widening factor k


class Block(nn.Module):
    """o = relu(bn(x)); out = conv(relu(bn(conv(o, stride)))) + shortcut, shortcut = conv1x1(o) or x."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        changes = cin != cout or stride != 1
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))  # (B, cin, H, W)
        z = self.conv2(torch.relu(self.bn2(self.conv1(o))))  # (B, cout, H/s, W/s)
        return z + (x if self.shortcut is None else self.shortcut(o))


def wrn_blocks(depth: int, width: int, in_channels: int) -> tuple[list[nn.Module], list[int]]:
    """The stem and the 3 * n blocks of a WRN-depth-width, with each one's output width."""
    if depth < 10 or (depth - 4) % 6 or width < 1:
        raise DistreeError(f"a WideResNet needs depth = 6n + 4 >= 10 and width >= 1, got WRN-{depth}-{width}")
    n = (depth - 4) // 6
    layers, widths, cin = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)], [16], 16
    for group, stride in enumerate((1, 2, 2)):
        for i in range(n):
            cout = 16 * width * 2 ** group
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            widths.append(cout)
            cin = cout
    return layers, widths


class WideResNet(nn.Module):
    """A WRN classifier; `features` gives the final group's map after BN-ReLU (for AT and NoNN)."""

    def __init__(self, cfg: WRNConfig, num_classes: int, in_channels: int):
        super().__init__()
        layers, widths = wrn_blocks(cfg.depth, cfg.width, in_channels)
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        self.num_filters = widths[-1]
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.layers(x)))  # (B, 64k, H/4, W/4)

    def classify(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean((2, 3)))  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))  # (B, K)


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions, unit BN, zero biases: the WRN reference initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
