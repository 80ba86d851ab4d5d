"""How an image becomes a model's input: the one rule a run's training, evaluation, serving and
exported students all apply, recorded in the run's config.json and its export manifest.

Written with numpy and Pillow only, so that a client of an exported ONNX student prepares its
images exactly as the run's training images were prepared, without torch:

    prep = Preprocessing.from_dict(manifest["preprocessing"])
    x = prep(Image.open("shoe.png"))  # (1, C, size, size) float32, the student's input

The steps, in order:
1. geometry. "pad": the dataset's images are `source` x `source` and are zero-padded evenly to
   size x size (Fashion-MNIST: 28 -> 32). "crop-resize": centre-cropped to a square (aspect
   kept) and resized (bilinear) to size x size (an image folder; CIFAR and the synthetic set
   are 32x32 already, so nothing changes for them). An image of another size than the rule
   takes as it is (`source` for pad, `size` for crop-resize) is first cropped and resized to it.
2. channels. The image is decoded as RGB; a 1-channel run takes its grey value by Pillow's "L"
   weights (ITU-R 601-2 luma), a 3-channel run keeps R, G, B (a grey image repeats its value).
3. normalisation: (pixels / 255 - mean) / std per channel, with the training split's mean and std.
"""
from dataclasses import asdict, dataclass

import numpy as np

from distree.errors import DistreeError

RESIZES = ("pad", "crop-resize")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes without colour
LUMA = (19595, 38470, 7471)  # Pillow's RGB -> L weights, in 1/65536


@dataclass(frozen=True)
class Preprocessing:
    """A run's input rule (see the module's docstring); a run's config.json "preprocessing"."""
    resize: str  # one of RESIZES
    size: int  # side of the model's square input
    channels: int  # 1 (grey) or 3 (RGB)
    mean: tuple  # per channel, of pixels / 255 on the training split
    std: tuple
    source: int | None = None  # pad only: the side of the images before padding

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        pad = self.resize == "pad"
        if self.resize not in RESIZES or self.channels not in (1, 3) or self.size < 1 or \
                len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0 or \
                pad != (self.source is not None) or (pad and not 0 < self.source <= self.size):
            raise DistreeError(f"bad preprocessing rule {asdict(self)}")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """The rule as config.json and manifest.json store it (the "steps" text is ignored)."""
        try:
            return cls(d["resize"], int(d["size"]), int(d["channels"]), d["mean"], d["std"], d.get("source"))
        except (KeyError, TypeError, ValueError) as err:
            raise DistreeError(f"bad preprocessing rule {d!r}: {err!r}") from None

    def to_dict(self) -> dict:
        """The rule as JSON, with its steps spelled out for a reader."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "steps": self.steps()}

    @property
    def side(self) -> int:
        """The side an image has before padding: what the geometry resizes other images to."""
        return self.source if self.resize == "pad" else self.size

    def steps(self) -> list[str]:
        s, n = self.side, self.size
        fit = f"an image that is not {s}x{s}: centre-crop to a square, resize bilinear to {s}x{s}"
        resize = [fit, f"zero-pad evenly to {n}x{n} (black borders of {(n - s) // 2} pixels)"] \
            if self.resize == "pad" else [fit]
        colour = "decode as RGB, then grey by Pillow's L: (R*19595 + G*38470 + B*7471 + 32768) >> 16" \
            if self.channels == 1 else "decode as RGB (a grey image repeats its value in R, G and B)"
        return [colour, *resize, "float32: (pixels / 255 - mean) / std, per channel", f"shape (1, {self.channels}, "
                f"{n}, {n})"]

    def fits(self, size: tuple[int, int], colour: bool) -> bool:
        """Whether an image of this (width, height), in colour or not, already is what the rule takes
        as it is (a run's own images): one that does not is converted, and serving counts it."""
        return tuple(size) == (self.side, self.side) and colour == (self.channels == 3)

    def pixels(self, image) -> np.ndarray:
        """A Pillow image -> (channels, size, size) uint8, by the rule's geometry and channels."""
        return to_channels(geometry(image, self.resize, self.size, self.source), self.channels)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (..., C, H, W) -> float32 model inputs: (pixels / 255 - mean) / std per channel."""
        mean = np.asarray(self.mean, np.float32).reshape(-1, 1, 1)  # (C, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(-1, 1, 1)
        return (pixels.astype(np.float32) / np.float32(255) - mean) / std

    def __call__(self, image) -> np.ndarray:
        """A Pillow image, a path to one, or a uint8 array (H, W) or (H, W, 3) -> (1, C, size, size) float32."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            with Image.open(image) as img:
                return self.normalise(self.pixels(img))[None]
        return self.normalise(self.pixels(image))[None]  # (1, C, size, size)


def geometry(image, resize: str, size: int, source: int | None = None) -> np.ndarray:
    """A Pillow image -> (3, size, size) uint8 RGB, cropped, resized and padded by the rule's step 1."""
    from PIL import Image, ImageOps  # imported here: a run of tensors never needs Pillow

    s = source if resize == "pad" else size
    image.draft("RGB", (s, s))  # JPEG: decode at the smallest scale still >= s (much faster)
    image = ImageOps.exif_transpose(image).convert("RGB")  # phones store the orientation in EXIF
    if image.size != (s, s):
        image = ImageOps.fit(image, (s, s), Image.Resampling.BILINEAR)  # centre crop, resize
    rgb = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # (3, s, s)
    return np.ascontiguousarray(pad(rgb, size) if resize == "pad" else rgb)  # (3, size, size)


def pad(pixels: np.ndarray, size: int) -> np.ndarray:
    """Square images (..., s, s) zero-padded evenly (black borders) to (..., size, size)."""
    s = pixels.shape[-1]
    lo, hi = (size - s) // 2, size - s - (size - s) // 2
    return np.pad(pixels, [(0, 0)] * (pixels.ndim - 2) + [(lo, hi), (lo, hi)])


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """RGB uint8 (..., 3, H, W) -> (..., channels, H, W): unchanged for 3, Pillow's L for 1."""
    if channels == 3:
        return rgb
    w = np.asarray(LUMA, np.int64).reshape(3, 1, 1)  # (3, 1, 1)
    grey = ((rgb.astype(np.int64) * w).sum(-3, keepdims=True) + 32768) >> 16  # (..., 1, H, W)
    return grey.astype(np.uint8)
