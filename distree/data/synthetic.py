"""A seeded, learnable 3-channel set for tests and examples: a smooth random pattern per class plus noise."""
import torch

SIZE = 32


def make_synthetic(seed: int, classes: int = 10, train: int = 512, test: int = 128):
    """((images (512, 3, 32, 32) uint8, labels), (test images, labels)), classes balanced."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(classes, 3, 4, 4, generator=g)  # (K, 3, 4, 4)
    patterns = torch.nn.functional.interpolate(patterns, size=SIZE, mode="bilinear")  # (K, 3, 32, 32)

    def draw(n):
        y = torch.arange(n) % classes  # (n,): balanced classes
        noise = torch.rand(n, 3, SIZE, SIZE, generator=g)  # (n, 3, 32, 32)
        x = (0.6 * patterns[y] + 0.4 * noise) * 255
        return x.to(torch.uint8), y

    return draw(train), draw(test)
