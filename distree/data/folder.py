"""A user's image folder: DIR/train/CLASS/*.{png,jpg,jpeg,bmp,webp} and DIR/test/CLASS/...

Classes are the train folder's sub-folders, in sorted order. Images are centre-cropped and
resized (the "crop-resize" rule of `distree.preprocessing`), in colour if any image has colour,
else grey. Every image is decoded once, into a cache file (in the run directory) that holds the
tensors and the list of files with their sizes and modification times; a later load whose
folder lists the same files reads the cache instead of decoding, and any added, removed or
changed file rebuilds it.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from distree.data.images import IMAGE_SUFFIXES, image_files, read_images, to_channels, warn_skipped
from distree.errors import DistreeError

CACHE_VERSION = 1
SPLITS = ("train", "test")


@dataclass
class FolderImages:
    train: tuple[torch.Tensor, torch.Tensor]  # images (M, C, S, S) uint8, labels (M,) int64
    test: tuple[torch.Tensor, torch.Tensor]
    class_names: list[str]


def class_folders(root: Path) -> dict[str, list[Path]]:
    """{split: its class folders}, checked: train and test exist, test's classes are train's."""
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DistreeError(f"{root} needs train/CLASS/ and test/CLASS/ folders of images "
                           f"({', '.join(IMAGE_SUFFIXES)})")
    folders = {s: sorted(d for d in (root / s).iterdir() if d.is_dir()) for s in SPLITS}
    if not folders["train"]:
        raise DistreeError(f"{root / 'train'} has no class folders; put each class's images in train/CLASS/")
    names = {d.name for d in folders["train"]}
    extra = [d.name for d in folders["test"] if d.name not in names]
    if extra:
        raise DistreeError(f"{root / 'test'} has classes that train does not: {', '.join(extra)}")
    return folders


def listing(root: Path, folders: dict[str, list[Path]]) -> list[list]:
    """[split, class, path relative to root, bytes, mtime in ns] of every image file: what the cache is checked against."""
    rows = []
    for split, dirs in folders.items():
        for d in dirs:
            for p in image_files(d):
                st = p.stat()
                rows.append([split, d.name, str(p.relative_to(root)), st.st_size, st.st_mtime_ns])
    return rows


def read_folder(root: Path, size: int, cache: Path | None = None) -> FolderImages:
    """The folder's train and test images at size x size, from the cache when it matches the folder."""
    if not root.is_dir():
        raise DistreeError(f"image folder {root} not found")
    folders = class_folders(root)
    files = listing(root, folders)
    if not files:
        raise DistreeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders under {root}")
    key = {"version": CACHE_VERSION, "size": size, "files": files}
    found = load_cache(cache, key)
    if found is not None:
        return found
    out = decode(root, folders, files, size)
    if cache is not None:
        save_cache(cache, key, out)
    return out


def decode(root: Path, folders: dict[str, list[Path]], files: list[list], size: int) -> FolderImages:
    """Decodes every listed file (skipping unreadable ones, with one warning); an error for an empty class."""
    names = [d.name for d in folders["train"]]
    decoded = read_images([root / rel for _, _, rel, _, _ in files], "crop-resize", size)
    warn_skipped(decoded.skipped, len(files), root)
    kept = {str(p.relative_to(root)) for p in decoded.kept}
    rows = [(split, names.index(cls)) for split, cls, rel, _, _ in files if rel in kept]  # in decoded order
    channels = 3 if any(decoded.colour) else 1
    out = {}
    for split in SPLITS:
        pick = torch.tensor([i for i, (s, _) in enumerate(rows) if s == split], dtype=torch.long)
        labels = torch.tensor([c for s, c in rows if s == split], dtype=torch.long)
        for d in folders[split]:
            if not (labels == names.index(d.name)).any():
                raise DistreeError(f"class folder {d} has no readable images; add some or remove the folder")
        out[split] = (to_channels(decoded.pixels[pick], channels), labels)  # (M, C, S, S), (M,)
    return FolderImages(out["train"], out["test"], names)


def load_cache(path: Path | None, key: dict) -> FolderImages | None:
    """The cached images if the cache exists, reads and was built from exactly these files; else None."""
    if path is None or not path.is_file():
        return None
    try:
        c = torch.load(path, map_location="cpu", weights_only=True)
        if c["key"] != key:
            return None
        return FolderImages((c["train_x"], c["train_y"]), (c["test_x"], c["test_y"]), list(c["class_names"]))
    except Exception:  # a damaged cache is only a cache: decode again
        return None


def save_cache(path: Path, key: dict, images: FolderImages) -> None:
    """Writes the cache to a temporary file, then renames it over the old one."""
    tmp = Path(f"{path}.tmp")
    torch.save({"key": key, "train_x": images.train[0], "train_y": images.train[1], "test_x": images.test[0],
                "test_y": images.test[1], "class_names": images.class_names}, tmp)
    os.replace(tmp, path)
