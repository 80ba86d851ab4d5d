"""Datasets as whole tensors: Fashion-MNIST, CIFAR-10 and a seeded synthetic set.

Images are kept as one uint8 tensor per split and batched by indexing, which on a CPU is far
faster than a DataLoader that builds every sample in Python. Augmentation (reflect pad 4,
random crop, optional flip) works on whole batches.
"""
import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from distree.errors import DistreeError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_DIR = "data/cifar-10-batches-py"
DATASETS = ("fashion-mnist", "cifar10", "synthetic")
SHAPES = {"fashion-mnist": (10, 1), "cifar10": (10, 3), "synthetic": (10, 3)}  # (classes, channels)
SIZE = 32  # every image is served as 32x32


class TensorImages(Dataset):
    """A split: uint8 images (M, C, 32, 32) and int64 labels (M,), served normalised."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 flip: bool):
        self.images, self.labels = images, labels  # (M, C, 32, 32) uint8, (M,) int64
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.flip = flip  # whether augmentation may mirror images (not for Fashion-MNIST's clothes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.batch(torch.tensor([i]))[0][0], self.labels[i]

    def batch(self, idx: torch.Tensor, augment: bool = False, generator: torch.Generator = None):
        """Images (B, C, 32, 32) float32 normalised and labels (B,) of the samples idx."""
        x = self.images[idx]  # (B, C, 32, 32) uint8
        if augment:
            x = augment_batch(x, self.flip, generator)
        return (x.float() / 255 - self.mean) / self.std, self.labels[idx]


def augment_batch(x: torch.Tensor, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Reflect-pad by 4, take a random 32x32 crop per image, and mirror half of them if flip."""
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x.float(), (4, 4, 4, 4), mode="reflect")  # (B, C, H+8, W+8)
    dy, dx = (torch.randint(0, 9, (2, B), generator=generator))  # (B,), (B,)
    rows = (dy[:, None] + torch.arange(H))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(W))[:, None, None, :]  # (B, 1, 1, W)
    out = padded[torch.arange(B)[:, None, None, None], torch.arange(C)[None, :, None, None], rows, cols]
    if flip:
        mirror = torch.rand(B, generator=generator) < 0.5  # (B,)
        out = torch.where(mirror[:, None, None, None], out.flip(3), out)
    return out.to(x.dtype)  # (B, C, H, W)


def batches(n: int, batch_size: int, shuffle: bool, generator: torch.Generator = None):
    """Index tensors covering range(n) in batches, in a seeded random order if shuffle."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # one of DATASETS
    data_dir: str = None  # None: the dataset's default folder
    val_size: int = 5000  # training images held out for validation and calibration
    seed: int = 0  # of the train/val split


@dataclass
class Splits:
    train: TensorImages
    val: TensorImages  # held out from the training set, for calibration; test never chooses anything
    test: TensorImages
    num_classes: int
    in_channels: int


def dataset_shape(name: str) -> dict:
    """Number of classes and input channels of a dataset, known without reading it."""
    if name not in SHAPES:
        raise DistreeError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    num_classes, in_channels = SHAPES[name]
    return {"num_classes": num_classes, "in_channels": in_channels}


def load_dataset(name: str = "fashion-mnist", data_dir: str = None, val_size: int = 5000, seed: int = 0) -> Splits:
    """Loads a dataset as train/val/test splits; val is a seeded random part of the training set.

    The synthetic set has 512 training images, so its val_size is capped at 128.
    """
    shape = dataset_shape(name)
    if name == "fashion-mnist":
        ((xtr, ytr), (xte, yte)), flip = read_fashion_mnist(Path(data_dir or FASHION_MNIST_DIR)), False
    elif name == "cifar10":
        ((xtr, ytr), (xte, yte)), flip = read_cifar10(Path(data_dir or CIFAR10_DIR)), True
    else:
        ((xtr, ytr), (xte, yte)), flip = make_synthetic(seed), True
        val_size = min(val_size, 128)
    if not 0 < val_size < len(ytr):
        raise DistreeError(f"val_size must be between 1 and {len(ytr) - 1} for {name}, got {val_size}")
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed))
    tr, va = perm[val_size:], perm[:val_size]
    pixels = xtr[tr].float() / 255  # (M, C, 32, 32): statistics of the training split only
    mean, std = pixels.mean((0, 2, 3)), pixels.std((0, 2, 3))  # (C,), (C,)
    split = lambda x, y: TensorImages(x, y, mean, std, flip)  # noqa: E731
    return Splits(split(xtr[tr], ytr[tr]), split(xtr[va], ytr[va]), split(xte, yte), **shape)


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
        x = torch.nn.functional.pad(torch.from_numpy(images)[:, None], (2, 2, 2, 2))  # (M, 1, 32, 32)
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


def read_cifar10(root: Path):
    """((images (50000, 3, 32, 32) uint8, labels), (test images, labels)) from the python pickles."""
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not (root / "data_batch_1").is_file():
        raise DistreeError(f"CIFAR-10 not found in {root}; put the python version's cifar-10-batches-py "
                           "folder there (distree never downloads it) or pass --data-dir")

    def read(names):
        xs, ys = [], []
        for name in names:
            try:
                with open(root / name, "rb") as f:
                    d = pickle.load(f, encoding="bytes")
                xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, SIZE, SIZE))
                ys.append(np.asarray(d[b"labels"], np.int64))
            except (OSError, EOFError, KeyError, ValueError, TypeError, pickle.UnpicklingError) as err:
                raise DistreeError(f"corrupt CIFAR-10 file {root / name}: {err!r}") from None
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])


def make_synthetic(seed: int, classes: int = 10, train: int = 512, test: int = 128):
    """A seeded, learnable 3-channel set: a smooth random pattern per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(classes, 3, 4, 4, generator=g)  # (K, 3, 4, 4)
    patterns = torch.nn.functional.interpolate(patterns, size=SIZE, mode="bilinear")  # (K, 3, 32, 32)

    def draw(n):
        y = torch.arange(n) % classes  # (n,): balanced classes
        noise = torch.rand(n, 3, SIZE, SIZE, generator=g)  # (n, 3, 32, 32)
        x = (0.6 * patterns[y] + 0.4 * noise) * 255
        return x.to(torch.uint8), y

    return draw(train), draw(test)
