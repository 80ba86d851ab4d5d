"""The samples the aggregator feeds: the first S of a split of the run's dataset, or a folder of images.

A folder's images go through the loader training uses (`distree.data.images`): decoded with
Pillow, centre-cropped to a square, resized to the run's image size, converted to its channels
and normalised with its training statistics. Files that cannot be read are skipped with one
warning line. A picture under a folder named by a class (`images/cat/x.png`, or by its index,
`images/3/x.png`) carries that label; any other is unlabelled (-1) and left out of accuracy.
"""
from pathlib import Path

import torch

from distree.data import IMAGE_SUFFIXES, SIZE
from distree.data.images import Decoded, image_files, read_images, warn_skipped
from distree.errors import DistreeError
from distree.run_dir import class_names, read_config, run_splits

LUMA = (19595, 38470, 7471)  # Pillow's RGB -> L weights, in 1/65536


def load_samples(run_dir, split: str = "test", count: int = 0, images: str = None):
    """Samples x (S, C, H, W) float32 and labels (S,) int64; count 0 means all."""
    config = read_config(run_dir)
    splits = run_splits(run_dir, config)
    data = getattr(splits, split)
    if images is not None:
        return load_folder(Path(images), splits.in_channels, data.mean, data.std, count, splits.image_size,
                           class_names(config))
    n = len(data) if count <= 0 else min(count, len(data))
    return data.batch(torch.arange(n))


def read_folder_images(root: Path, size: int, count: int = 0) -> Decoded:
    """The readable images among the first `count` (0: all) image files under root, sorted by path."""
    if not root.is_dir():
        raise DistreeError(f"image folder {root} not found")
    paths = image_files(root)
    if count > 0:
        paths = paths[:count]
    if not paths:
        raise DistreeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    decoded = read_images(paths, size)
    if not decoded.kept:
        raise DistreeError(f"none of the {len(paths)} image files under {root} can be read")
    return decoded


def count_images(run_dir, images: str, count: int = 0) -> tuple[int, int]:
    """(readable, skipped) image files of a folder at the run's image size: checked before a session starts."""
    decoded = read_folder_images(Path(images), read_config(run_dir)["data_shape"].get("image_size", SIZE), count)
    return len(decoded.kept), len(decoded.skipped)


def load_folder(root: Path, channels: int, mean: torch.Tensor, std: torch.Tensor, count: int = 0,
                size: int = SIZE, names=()):
    """The readable images under root, sorted by path, as the model's normalised inputs and labels."""
    decoded = read_folder_images(root, size, count)
    warn_skipped(decoded.skipped, len(decoded.kept) + len(decoded.skipped), root)
    x = decoded.pixels  # (S, 3, H, W) uint8
    if channels == 1:
        w = torch.tensor(LUMA, dtype=torch.int32).view(1, 3, 1, 1)
        x = ((x.int() * w).sum(1, keepdim=True) + 32768) >> 16  # (S, 1, H, W), as Image.convert("L")
    labels = [label_of(p, root, list(names)) for p in decoded.kept]
    return (x.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1), torch.tensor(labels)


def label_of(path: Path, root: Path, names: list[str]) -> int:
    """The class a picture's folder names (a class name, or an index), else -1."""
    if path.parent == root:
        return -1
    folder = path.parent.name
    if folder in names:
        return names.index(folder)
    return int(folder) if folder.isdigit() and (not names or int(folder) < len(names)) else -1
