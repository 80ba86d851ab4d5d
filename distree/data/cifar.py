"""CIFAR-10 and CIFAR-100 from the python pickles of a local folder; distree never downloads them.

Both hold `data` (M, 3072) uint8 rows (R, G, B planes of 32x32); CIFAR-10 labels are `labels`
in data_batch_1..5 and test_batch, CIFAR-100's fine labels are `fine_labels` in train and test.
Class names come from batches.meta (`label_names`) or meta (`fine_label_names`).
"""
import pickle
from pathlib import Path

import numpy as np
import torch

from distree.errors import DistreeError

CIFAR10_DIR = "data/cifar-10-batches-py"
CIFAR100_DIR = "data/cifar-100-python"


class CifarFormat:
    """Where one CIFAR variant keeps its files and labels."""

    def __init__(self, title, folder, train, test, label_key, meta, names_key):
        self.title, self.folder, self.train, self.test = title, folder, train, test
        self.label_key, self.meta, self.names_key = label_key, meta, names_key


CIFAR10 = CifarFormat("CIFAR-10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                      b"labels", "batches.meta", b"label_names")
CIFAR100 = CifarFormat("CIFAR-100", "cifar-100-python", ["train"], ["test"], b"fine_labels", "meta",
                       b"fine_label_names")


def read_cifar(root: Path, fmt: CifarFormat):
    """((images (M, 3, 32, 32) uint8, labels (M,)), (test images, labels)), class names (or None)."""
    if (root / fmt.folder).is_dir():
        root = root / fmt.folder
    if not (root / fmt.train[0]).is_file():
        raise DistreeError(f"{fmt.title} not found in {root}; put the python version's {fmt.folder} folder there "
                           "(distree never downloads it) or pass --data-dir")

    def read(names):
        xs, ys = [], []
        for name in names:
            d = unpickle(root / name, fmt)
            try:
                xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d[fmt.label_key], np.int64))
            except (KeyError, ValueError, TypeError) as err:
                raise DistreeError(f"corrupt {fmt.title} file {root / name}: {err!r}") from None
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    names = None
    if (root / fmt.meta).is_file():
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in unpickle(root / fmt.meta, fmt)[fmt.names_key]]
    return read(fmt.train), read(fmt.test), names


def unpickle(path: Path, fmt: CifarFormat) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as err:
        raise DistreeError(f"corrupt {fmt.title} file {path}: {err!r}") from None
