"""Image files decoded with Pillow into square uint8 tensors, skipping files that cannot be read.

A photo is centre-cropped to a square (aspect kept) and resized to size x size. Unreadable,
truncated or empty files are skipped and reported in one warning line, so one bad file among
thousands never stops a run.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes without colour
NAMED_IN_WARNING = 3  # skipped files named in the warning line


def image_files(root: Path) -> list[Path]:
    """Every file under root with an image suffix, sorted by path."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(path: Path, size: int) -> tuple[torch.Tensor, bool]:
    """(pixels (3, size, size) uint8, whether the image has colour); raises whatever Pillow raises."""
    from PIL import Image, ImageOps  # imported here: only image folders need Pillow

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at the smallest scale still >= size (much faster)
        img = ImageOps.exif_transpose(img)  # phones store the orientation in EXIF
        colour = img.mode not in GREY_MODES
        img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)  # centre crop, resize
        pixels = np.asarray(img, dtype=np.uint8)  # (size, size, 3)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1), colour  # (3, size, size)


@dataclass
class Decoded:
    """The readable images of a list of files, in its order, and the files that were skipped."""
    pixels: torch.Tensor  # (M, 3, size, size) uint8
    colour: bool  # whether any image has colour
    kept: list[Path]  # the M files read
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def read_images(paths: list[Path], size: int) -> Decoded:
    """Decodes every path; a file Pillow cannot read (unknown format, truncated, empty) is skipped."""
    pixels, kept, skipped, colour = [], [], [], False
    for path in paths:
        try:
            x, c = read_image(path, size)
        except Exception as err:  # a damaged file fails in many ways: OSError, SyntaxError, ValueError, bombs
            skipped.append((path, type(err).__name__))
            continue
        pixels.append(x)
        kept.append(path)
        colour = colour or c
    stacked = torch.stack(pixels) if pixels else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return Decoded(stacked, colour, kept, skipped)  # (M, 3, size, size)


def warn_skipped(skipped: list[tuple[Path, str]], total: int, root: Path) -> None:
    """One line on stderr: how many of total files were skipped, naming the first few."""
    if not skipped:
        return
    names = ", ".join(f"{p.relative_to(root)} ({why})" for p, why in skipped[:NAMED_IN_WARNING])
    more = f" and {len(skipped) - NAMED_IN_WARNING} more" if len(skipped) > NAMED_IN_WARNING else ""
    print(f"warning: skipped {len(skipped)} of {total} image files under {root} that cannot be read: {names}{more}",
          file=sys.stderr)
