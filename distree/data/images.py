"""Image files decoded with Pillow by a run's preprocessing rule, skipping files that cannot be read.

Every file goes through `distree.preprocessing.geometry` (the rule's crop, resize and padding,
as RGB); the caller then takes the run's channels. Unreadable, truncated or empty files are
skipped and reported in one warning line, so one bad file among thousands never stops a run;
images whose size or channels differ from the run's are counted, so that serving can say how
many it converted.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distree.preprocessing import GREY_MODES, geometry, to_channels as rgb_to_channels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
NAMED_IN_WARNING = 3  # skipped files named in the warning line


def image_files(root: Path) -> list[Path]:
    """Every file under root with an image suffix, sorted by path."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclass
class Decoded:
    """The readable images of a list of files, in its order, and the files that were skipped."""
    pixels: torch.Tensor  # (M, 3, size, size) uint8 RGB
    colour: list[bool]  # per image: whether it has colour
    kept: list[Path]  # the M files read
    sizes: list[tuple[int, int]]  # per image: (width, height) as stored
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def read_images(paths: list[Path], resize: str, size: int, source: int | None = None) -> Decoded:
    """Decodes every path by the geometry (resize, size, source); a file Pillow cannot read (unknown
    format, truncated, empty) is skipped."""
    from PIL import Image  # imported here: only image files need Pillow

    pixels, colour, kept, sizes, skipped = [], [], [], [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                stored, mode = img.size, img.mode
                x = geometry(img, resize, size, source)  # (3, size, size)
        except Exception as err:  # a damaged file fails in many ways: OSError, SyntaxError, ValueError, bombs
            skipped.append((path, type(err).__name__))
            continue
        pixels.append(torch.from_numpy(x))
        colour.append(mode not in GREY_MODES)
        kept.append(path)
        sizes.append(stored)
    stacked = torch.stack(pixels) if pixels else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return Decoded(stacked, colour, kept, sizes, skipped)  # (M, 3, size, size)


def to_channels(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB uint8 (M, 3, H, W) -> (M, channels, H, W) by the preprocessing rule's channel step."""
    return torch.from_numpy(rgb_to_channels(rgb.numpy(), channels))


def warn_skipped(skipped: list[tuple[Path, str]], total: int, root: Path) -> None:
    """One line on stderr: how many of total files were skipped, naming the first few."""
    if not skipped:
        return
    names = ", ".join(f"{p.relative_to(root)} ({why})" for p, why in skipped[:NAMED_IN_WARNING])
    more = f" and {len(skipped) - NAMED_IN_WARNING} more" if len(skipped) > NAMED_IN_WARNING else ""
    print(f"warning: skipped {len(skipped)} of {total} image files under {root} that cannot be read: {names}{more}",
          file=sys.stderr)
