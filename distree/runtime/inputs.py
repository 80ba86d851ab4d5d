"""The samples the aggregator feeds: the first S of a split of the run's dataset, or a folder of images.

Images in a folder are read with Pillow, converted to the run's channels, resized to 32x32 and
normalised with the run's training statistics. A picture under a folder named by a class index
(`images/3/x.png`) carries that label; any other is unlabelled (-1) and left out of accuracy.
"""
from pathlib import Path

import numpy as np
import torch

from distree.data import SIZE, load_dataset
from distree.errors import DistreeError
from distree.run_dir import data_config, read_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_samples(run_dir, split: str = "test", count: int = 0, images: str = None):
    """Samples x (S, C, 32, 32) float32 and labels (S,) int64; count 0 means all."""
    cfg = data_config(read_config(run_dir))
    splits = load_dataset(cfg.name, cfg.data_dir, cfg.val_size, cfg.seed)
    data = getattr(splits, split)
    if images is not None:
        return load_folder(Path(images), splits.in_channels, data.mean, data.std, count)
    n = len(data) if count <= 0 else min(count, len(data))
    return data.batch(torch.arange(n))


def load_folder(root: Path, channels: int, mean: torch.Tensor, std: torch.Tensor, count: int = 0):
    """The images under root, sorted by path, as the model's normalised inputs and labels."""
    from PIL import Image  # Pillow comes with matplotlib; only this path needs it

    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if count > 0:
        paths = paths[:count]
    if not paths:
        raise DistreeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    xs, labels = [], []
    for path in paths:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((SIZE, SIZE))
            pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).reshape(SIZE, SIZE, channels)
        xs.append(pixels.permute(2, 0, 1))  # (C, 32, 32)
        labels.append(int(path.parent.name) if path.parent != root and path.parent.name.isdigit() else -1)
    x = torch.stack(xs).float() / 255  # (S, C, 32, 32)
    return (x - mean) / std, torch.tensor(labels)
