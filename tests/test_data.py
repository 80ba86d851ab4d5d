"""Datasets: splits, normalisation, batch augmentation, and clear errors for missing or corrupt files."""
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from distree.data import FASHION_MNIST_DIR, augment_batch, batches, dataset_shape, load_dataset
from distree.errors import DistreeError


def test_synthetic_splits_are_seeded_and_disjoint():
    a, b = load_dataset("synthetic", val_size=64, seed=3), load_dataset("synthetic", val_size=64, seed=3)
    assert (len(a.train), len(a.val), len(a.test)) == (448, 64, 128)
    assert (a.num_classes, a.in_channels) == (10, 3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    x, y = a.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, _ = a.train.batch(torch.arange(len(a.train)))
    assert x.mean((0, 2, 3)).abs().max() < 1e-4 and (x.std((0, 2, 3)) - 1).abs().max() < 1e-3


def test_synthetic_caps_val_size():
    assert len(load_dataset("synthetic").val) == 128


@pytest.mark.parametrize("flip", [False, True])
def test_augment_is_a_crop_of_the_reflect_padded_image(flip):
    B = 16
    x = torch.randint(0, 255, (B, 2, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, flip=flip, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # replays the draws: offsets, then mirrors
    dy, dx = torch.randint(0, 9, (2, B), generator=g)
    mirror = torch.rand(B, generator=g) < 0.5 if flip else torch.zeros(B, dtype=torch.bool)
    padded = torch.nn.functional.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    for b in range(B):
        crop = padded[b, :, dy[b]:dy[b] + 32, dx[b]:dx[b] + 32]
        assert torch.equal(out[b].float(), crop.flip(2) if mirror[b] else crop)
    assert 0 < mirror.sum() < B or not flip


def test_batches_cover_every_index_once():
    order = torch.cat(batches(10, 3, True, torch.Generator().manual_seed(0)))
    assert sorted(order.tolist()) == list(range(10))
    assert [len(b) for b in batches(10, 3, False)] == [3, 3, 3, 1]


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_is_padded_to_32():
    s = load_dataset("fashion-mnist", val_size=5000)
    assert (len(s.train), len(s.val), len(s.test), s.in_channels) == (55000, 5000, 10000, 1)
    assert s.train.images.shape[1:] == (1, 32, 32) and not s.train.flip
    assert s.test.images[:, :, :2].sum() == 0  # the 2-pixel zero border


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DistreeError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "nowhere"))


def test_corrupt_idx_file(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(tmp_path / f"{name}.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x03\x00\x00\x00\x05")  # claims 5 images, has no dims or data
    with pytest.raises(DistreeError, match="corrupt dataset file"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DistreeError, match="corrupt dataset file"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))


def write_cifar(root: Path, n: int = 20):
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(10)) * (n // 10)}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_from_local_pickles(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    s = load_dataset("cifar10", data_dir=str(tmp_path), val_size=10)
    assert (len(s.train), len(s.val), len(s.test)) == (90, 10, 20)
    assert s.train.images.shape[1:] == (3, 32, 32) and s.train.flip
    assert dataset_shape("cifar10") == {"num_classes": 10, "in_channels": 3}


def test_cifar10_missing_or_corrupt(tmp_path):
    with pytest.raises(DistreeError, match="never downloads"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DistreeError, match="corrupt CIFAR-10 file"):
        load_dataset("cifar10", data_dir=str(tmp_path / "c"), val_size=10)


def test_unknown_dataset_and_bad_val_size():
    with pytest.raises(DistreeError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(DistreeError, match="val_size"):
        load_dataset("synthetic", val_size=0)


def test_cifar100_fine_labels_and_names_from_local_pickles(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 300), ("test", 100)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [i % 20 for i in range(n)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)]}, f)
    s = load_dataset("cifar100", data_dir=str(tmp_path), val_size=50)
    assert (len(s.train), len(s.val), len(s.test), s.num_classes, s.in_channels) == (250, 50, 100, 100, 3)
    assert s.test.labels.tolist() == [i % 100 for i in range(100)] and s.class_names[7] == "class7"
    assert dataset_shape("cifar100") == {"num_classes": 100, "in_channels": 3}
    with pytest.raises(DistreeError, match="cifar-100-python.*never downloads"):
        load_dataset("cifar100", data_dir=str(tmp_path / "nowhere"))
