"""Datasets as whole tensors, split into train, val and test.

Images are kept as one uint8 tensor per split and batched by indexing, which on a CPU is far
faster than a DataLoader that builds every sample in Python. Augmentation (reflect pad 4,
random crop, optional flip) works on whole batches. The readers live beside this module:
Fashion-MNIST (idx.py), CIFAR-10 and CIFAR-100 (cifar.py), an image folder (folder.py) and a
synthetic set (synthetic.py).
"""
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from distree.data.cifar import CIFAR10, CIFAR100, CIFAR10_DIR, CIFAR100_DIR, read_cifar
from distree.data.folder import read_folder
from distree.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_SIDE, read_fashion_mnist
from distree.data.synthetic import make_synthetic
from distree.errors import DistreeError
from distree.preprocessing import Preprocessing

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "folder", "synthetic")
SHAPES = {"fashion-mnist": (10, 1), "cifar10": (10, 3), "cifar100": (100, 3), "synthetic": (10, 3)}  # (classes, channels)
SIZE = 32  # the built-in datasets' images are 32x32; a folder's are resized to its image_size
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER_VAL_SHARE = 10  # a folder holds out at most 1 in 10 of its training images for val


class TensorImages(Dataset):
    """A split: uint8 images (M, C, S, S) and int64 labels (M,), served normalised by the run's rule."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, preprocessing: Preprocessing, flip: bool):
        self.images, self.labels = images, labels  # (M, C, S, S) uint8, (M,) int64
        self.preprocessing = preprocessing
        self.flip = flip  # whether augmentation may mirror images (not for Fashion-MNIST's clothes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.batch(torch.tensor([i]))[0][0], self.labels[i]

    def batch(self, idx: torch.Tensor, augment: bool = False, generator: torch.Generator = None):
        """Images (B, C, S, S) float32 normalised and labels (B,) of the samples idx."""
        x = self.images[idx]  # (B, C, S, S) uint8
        if augment:
            x = augment_batch(x, self.flip, generator)
        return torch.from_numpy(self.preprocessing.normalise(x.numpy())), self.labels[idx]  # (B, C, S, S)


def augment_batch(x: torch.Tensor, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Reflect-pad by 4, take a random crop of the original size per image, and mirror half of them if flip."""
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


def forward_batch(device="cpu") -> int:
    """Samples per forward pass that needs no gradients (evidence, accuracies, the teacher's caches).
    On a CPU small batches keep the activations in cache: on the 2-core machines measured, 64 ran
    the teacher 1.9x and the students 1.7x faster than 500. In the channels-last layout of a run's
    models every sample's output is the same, bit for bit, in any batch of 8 or more (tests/test_models.py)."""
    return 64 if torch.device(device).type == "cpu" else 512


def batches(n: int, batch_size: int, shuffle: bool, generator: torch.Generator = None):
    """Index tensors covering range(n) in batches, in a seeded random order if shuffle."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # one of DATASETS
    data_dir: str = None  # None: the dataset's default folder (a folder dataset needs one)
    val_size: int = 5000  # training images held out for validation and calibration
    seed: int = 0  # of the train/val split
    image_size: int = SIZE  # side S of the square images; only a folder can be resized


@dataclass
class Splits:
    train: TensorImages
    val: TensorImages  # held out from the training set, for calibration; test never chooses anything
    test: TensorImages
    num_classes: int
    in_channels: int
    class_names: list[str]
    image_size: int
    preprocessing: Preprocessing  # how an image file becomes an input, as these images did

    def shape(self) -> dict:
        """What a model and a run need to know of the data: the run's config.json `data_shape`."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": self.image_size,
                "class_names": list(self.class_names)}


def dataset_shape(name: str) -> dict:
    """Number of classes and input channels of a built-in dataset, known without reading it."""
    if name == "folder":
        raise DistreeError("a folder dataset's classes and channels are known only once it is read")
    if name not in SHAPES:
        raise DistreeError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    num_classes, in_channels = SHAPES[name]
    return {"num_classes": num_classes, "in_channels": in_channels}


def dataset_rule(name: str) -> tuple[str, int | None]:
    """(resize, source) of a dataset's preprocessing: Fashion-MNIST is padded from 28x28, others cropped and resized."""
    return ("pad", FASHION_MNIST_SIDE) if name == "fashion-mnist" else ("crop-resize", None)


def read_splits(name: str, data_dir: str | None, seed: int, image_size: int, cache: Path | None):
    """(train images, labels), (test images, labels), class names, whether flips are allowed, and the
    largest val_size that makes sense, for one dataset."""
    if name != "folder" and image_size != SIZE:
        raise DistreeError(f"--image-size resizes a folder dataset only; {name} is {SIZE}x{SIZE}")
    if name == "fashion-mnist":
        train, test = read_fashion_mnist(Path(data_dir or FASHION_MNIST_DIR))
        return train, test, list(FASHION_MNIST_CLASSES), False, None
    if name in ("cifar10", "cifar100"):
        fmt, default = (CIFAR10, CIFAR10_DIR) if name == "cifar10" else (CIFAR100, CIFAR100_DIR)
        train, test, names = read_cifar(Path(data_dir or default), fmt)
        return train, test, names or (list(CIFAR10_CLASSES) if name == "cifar10" else None), True, None
    if name == "folder":
        if data_dir is None:
            raise DistreeError("--data folder needs --data-dir DIR, with DIR/train/CLASS/ and DIR/test/CLASS/")
        if not 8 <= image_size <= 512:
            raise DistreeError(f"--image-size must be between 8 and 512, got {image_size}")
        f = read_folder(Path(data_dir), image_size, cache)
        return f.train, f.test, f.class_names, True, max(1, len(f.train[1]) // FOLDER_VAL_SHARE)
    train, test = make_synthetic(seed)
    return train, test, None, True, 128


def load_dataset(name: str = "fashion-mnist", data_dir: str = None, val_size: int = 5000, seed: int = 0,
                 image_size: int = SIZE, cache: Path | None = None, preprocessing: Preprocessing = None) -> Splits:
    """Loads a dataset as train/val/test splits; val is a seeded random part of the training set.

    val_size is capped at 128 for the synthetic set (512 training images) and at a tenth of the
    training images for a folder. cache: where a folder's decoded images are kept (the run's
    image cache), None to decode every time. preprocessing: the rule a run recorded when its
    teacher trained (its mean and std are used); None derives it, with the training split's statistics.
    """
    if name not in DATASETS:
        raise DistreeError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    (xtr, ytr), (xte, yte), names, flip, cap = read_splits(name, data_dir, seed, image_size, cache)
    val_size = val_size if cap is None else min(val_size, cap)
    if not 0 < val_size < len(ytr):
        raise DistreeError(f"val_size must be between 1 and {len(ytr) - 1} for {name}, got {val_size}")
    num_classes = SHAPES[name][0] if name in SHAPES else len(names)
    names = names or [str(k) for k in range(num_classes)]
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed))
    tr, va = perm[val_size:], perm[:val_size]
    prep = preprocessing or derive_preprocessing(name, xtr[tr])
    resize, source = dataset_rule(name)
    if (prep.resize, prep.source, prep.size, prep.channels) != (resize, source, xtr.shape[-1], xtr.shape[1]):
        raise DistreeError(f"the run's recorded preprocessing ({prep.resize} to {prep.size}x{prep.size}, "
                           f"{prep.channels} channels) does not fit its {name} images {tuple(xtr.shape[1:])}")
    split = lambda x, y: TensorImages(x, y, prep, flip)  # noqa: E731
    return Splits(split(xtr[tr], ytr[tr]), split(xtr[va], ytr[va]), split(xte, yte), num_classes, xtr.shape[1],
                  names, xtr.shape[-1], prep)


def derive_preprocessing(name: str, train: torch.Tensor) -> Preprocessing:
    """The dataset's rule, with the mean and std of its training images (M, C, S, S) uint8."""
    pixels = train.float() / 255  # (M, C, S, S)
    mean, std = pixels.mean((0, 2, 3)), pixels.std((0, 2, 3)).clamp(min=1e-3)  # (C,), (C,)
    resize, source = dataset_rule(name)
    return Preprocessing(resize, train.shape[-1], train.shape[1], mean.tolist(), std.tolist(), source)
