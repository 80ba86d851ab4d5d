"""The samples a run is served or checked on: the first S of a split of its dataset, or image files.

Image files go through the run's preprocessing (`distree.preprocessing`, as recorded in its
config.json), exactly as its training images did: decoded with Pillow, cropped, resized or
padded, converted to its channels and normalised with its training statistics. Files that
cannot be read are skipped with one warning line; images whose size or channels differ from the
run's are converted by the rule, with one warning line that counts them. A picture under a
folder named by a class (`images/cat/x.png`, or by its index, `images/3/x.png`) carries that
label; any other is unlabelled (-1) and left out of accuracy.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distree.data import IMAGE_SUFFIXES
from distree.data.images import image_files, read_images, to_channels, warn_skipped
from distree.errors import DistreeError
from distree.preprocessing import Preprocessing
from distree.run_dir import class_names, read_config, run_preprocessing, run_splits


@dataclass
class Samples:
    x: torch.Tensor  # (S, C, H, W) float32, the model's inputs
    labels: torch.Tensor  # (S,) int64, -1 where unknown
    files: list[str] = field(default_factory=list)  # image files, relative to their folder, in x's order ([]: a split)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) of files that cannot be read
    converted: int = 0  # images whose size or channels differed from the run's


def load_samples(run_dir, split: str = "test", count: int = 0, images: str = None, warn: bool = True) -> Samples:
    """The first `count` samples (0: all) of a split, or the readable image files of a folder
    (the first `count` by path); warn: the warning lines on stderr."""
    if count < 0:
        raise DistreeError(f"a sample count must be >= 0 (0: all), got {count}")
    if images is not None:
        config = read_config(run_dir)
        return load_images(Path(images), run_preprocessing(run_dir, config), class_names(config), count, warn)
    data = getattr(run_splits(run_dir, read_config(run_dir)), split)
    n = len(data) if count <= 0 else min(count, len(data))
    return Samples(*data.batch(torch.arange(n)))


def load_images(root: Path, prep: Preprocessing, names=(), count: int = 0, warn: bool = True) -> Samples:
    """The readable images under root (the first `count` files by path; 0: all), prepared by prep."""
    if not root.is_dir():
        raise DistreeError(f"image folder {root} not found")
    paths = image_files(root)[:count or None]
    if not paths:
        raise DistreeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    decoded = read_images(paths, prep.resize, prep.size, prep.source)
    if not decoded.kept:
        raise DistreeError(f"none of the {len(paths)} image files under {root} can be read")
    converted = sum(not prep.fits(size, colour) for size, colour in zip(decoded.sizes, decoded.colour))
    if warn:
        warn_skipped(decoded.skipped, len(paths), root)
        warn_converted(converted, len(decoded.kept), root, prep)
    pixels = to_channels(decoded.pixels, prep.channels)  # (S, C, size, size) uint8
    x = torch.from_numpy(prep.normalise(pixels.numpy()))  # (S, C, size, size) float32
    labels = torch.tensor([label_of(p, root, list(names)) for p in decoded.kept], dtype=torch.long)
    return Samples(x, labels, [str(p.relative_to(root)) for p in decoded.kept],
                   [(str(p.relative_to(root)), why) for p, why in decoded.skipped], converted)


def warn_converted(converted: int, total: int, root: Path, prep: Preprocessing) -> None:
    """One line on stderr: how many images the rule had to convert to the run's size or channels."""
    if converted:
        kind = "grey" if prep.channels == 1 else "RGB"
        then = f", then zero-padded to {prep.size}x{prep.size}" if prep.resize == "pad" else ""
        print(f"warning: {converted} of {total} images under {root} are not {prep.side}x{prep.side} {kind} as the "
              f"run's images were: converted to {kind} and centre-cropped and resized to {prep.side}x{prep.side}"
              f"{then} (the run's preprocessing)", file=sys.stderr)


def label_of(path: Path, root: Path, names: list[str]) -> int:
    """The class a picture's folder names (a class name, or an index), else -1."""
    if path.parent == root:
        return -1
    folder = path.parent.name
    if folder in names:
        return names.index(folder)
    return int(folder) if folder.isdigit() and (not names or int(folder) < len(names)) else -1
