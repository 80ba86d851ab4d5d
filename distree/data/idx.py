"""Fashion-MNIST from its gzipped IDX files (Debian's `dataset-fashion-mnist`), zero-padded to 32x32."""
import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from distree.errors import DistreeError
from distree.preprocessing import pad

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_SIDE = 28  # as stored; zero-padded to PADDED_SIDE (the "pad" preprocessing rule)
PADDED_SIDE = 32
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def read_fashion_mnist(root: Path):
    """((images (60000, 1, 32, 32) uint8, labels), (test images, labels)), zero-padded from 28x28."""
    if not root.is_dir():
        raise DistreeError(f"Fashion-MNIST not found in {root}; install it with "
                           "`apt-get install dataset-fashion-mnist` or pass --data-dir")

    def read(prefix):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz", 2051)
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 2049)
        if images.ndim != 3 or len(images) != len(labels):
            raise DistreeError(f"corrupt Fashion-MNIST in {root}: {len(images)} images, {len(labels)} labels")
        x = torch.from_numpy(pad(images[:, None], PADDED_SIDE))  # (M, 1, 32, 32), by the "pad" preprocessing rule
        return x, torch.from_numpy(labels.astype(np.int64))

    return read("train"), read("t10k")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Reads one gzipped IDX file (big-endian magic, dims, then uint8 data)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
        found, = struct.unpack(">i", data[:4])
        ndim = data[3]
        dims = struct.unpack(f">{ndim}i", data[4:4 + 4 * ndim])
        array = np.frombuffer(bytearray(data), np.uint8, offset=4 + 4 * ndim)
        if found != magic or array.size != np.prod(dims):
            raise ValueError(f"magic {found} (expected {magic}), {array.size} bytes for shape {dims}")
        return array.reshape(dims)
    except FileNotFoundError:
        raise DistreeError(f"missing {path}; install `apt-get install dataset-fashion-mnist` or pass --data-dir")
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise DistreeError(f"corrupt dataset file {path}: {err}") from None
