"""Is this the same picture? A pixel check of two images that the model's vectors call close.

CLIP-like vectors are built to forget what a duplicate finder must see: the demo model gives two
different renders of "a small red circle at the top" a cosine of 0.9995, as high as a JPEG copy of
one of them (benchmarks/duplicates.py). So the vectors only propose candidates, and this module decides.

Each image is decoded as the indexer decodes it (EXIF orientation applied, so a rotated copy that says
so in its EXIF matches), shrunk to BASE pixels on its long side, and compared with the other over small
crop-like registrations (one side a crop of the other by up to MAX_CROP of each dimension, anywhere
in the frame): both are resampled to SIDE x SIDE, blurred (JPEG ringing and resampling moves edges by
a fraction of a pixel), and the distance is the PERCENTILE-th percentile of the per-pixel largest
channel difference (0-1) at the best registration. Re-encoding, resizing and light cropping leave it
small; another picture of the same thing differs somewhere (where an object is, its size, its colour).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import imaging

BASE = 96  # long side of the working copy, pixels
SIDE = 48  # both images are compared at SIDE x SIDE
BLUR = 1.5  # Gaussian radius at SIDE, pixels
PERCENTILE = 99.0
MAX_CROP = 0.06  # a "light crop": up to 6 % off each dimension
MAX_ASPECT_CHANGE = 0.10  # pictures whose aspect ratios differ more are different pictures
MAX_MEAN_SHIFT = 0.15  # a light crop moves the mean colour less (6 % of the frame); more: another picture
PIXEL_THRESHOLD = 0.04  # the default distance at or below which two images are the same picture (benchmarks/duplicates.py)
MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass
class Picture:
    image: object  # PIL RGB, BASE on its long side
    aspect: float  # width / height as decoded (EXIF orientation applied)
    _whole: np.ndarray | None = None

    @property
    def whole(self) -> np.ndarray:
        """The whole picture at SIDE x SIDE, blurred (computed once)."""
        if self._whole is None:
            self._whole = _array(self.image)
        return self._whole


def load_picture(path: bytes | str, *, max_pixels: int = imaging.DEFAULT_MAX_PIXELS) -> Picture | None:
    """The working copy of an image file, or None when it cannot be read or decoded now (offline, gone)."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            return None
        # JPEG draft decoding (DCT scaling) filters differently from a full decode: draft only well above BASE,
        # so that a JPEG and a PNG of one picture shrink to the same working copy
        img, _ = imaging.decode(data, max_pixels=max_pixels, draft=4 * BASE)
    except (OSError, imaging.ImageError):
        return None
    w, h = img.size
    if w < 2 or h < 2:
        return None
    scale = BASE / max(w, h)
    small = img.resize((max(2, round(w * scale)), max(2, round(h * scale))), Image.BOX)
    return Picture(small, w / h)


def from_image(img) -> Picture:
    """A Picture from a decoded PIL image (for callers that hold pixels already)."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = BASE / max(w, h)
    return Picture(img.resize((max(2, round(w * scale)), max(2, round(h * scale))), Image.BOX), w / h)


def _array(img, box=None) -> np.ndarray:
    from PIL import Image, ImageFilter

    small = img.resize((SIDE, SIDE), Image.BOX, box=box).filter(ImageFilter.GaussianBlur(BLUR))
    return np.asarray(small, dtype=np.float32) * np.float32(1 / 255)


_RANK = int(round(SIDE * SIDE * PERCENTILE / 100)) - 1


def _score(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b).max(axis=2).ravel()
    return float(np.partition(d, _RANK)[_RANK])


def _crop_box(img, s: float, fx: float, fy: float) -> tuple[float, float, float, float]:
    w, h = img.size
    x0, y0 = (1 - s) * w * fx, (1 - s) * h * fy
    return (x0, y0, x0 + s * w, y0 + s * h)


def distance(a: Picture, b: Picture, *, give_up_above: float | None = None) -> float:
    return registered(a, b, give_up_above=give_up_above)[0]


def registered(a: Picture, b: Picture, *, give_up_above: float | None = None):
    """How different two pictures are at their best light-crop registration (0 = identical); inf when
    their shapes are too different to be one picture. When the coarse registration is already worse than
    `give_up_above`, that value is returned without refining (a pair that is surely not the same picture)."""
    if abs(np.log(a.aspect / b.aspect)) > MAX_ASPECT_CHANGE:
        return float("inf"), None
    shift = float(np.abs(a.whole.mean(axis=(0, 1)) - b.whole.mean(axis=(0, 1))).max())
    if shift > MAX_MEAN_SHIFT:
        return max(shift, 2 * MAX_MEAN_SHIFT), None  # surely different, found without registering
    best = (float("inf"), 1.0, 0.5, 0.5, a, b)
    for big, small in ((a, b), (b, a)):  # `small` is (maybe) a crop of `big`
        target = small.whole
        for s in (1.0, 1 - MAX_CROP / 2, 1 - MAX_CROP):
            for fx in ((0.5,) if s == 1.0 else (0.0, 0.5, 1.0)):
                for fy in ((0.5,) if s == 1.0 else (0.0, 0.5, 1.0)):
                    v = _score(_array(big.image, _crop_box(big.image, s, fx, fy)), target)
                    if v < best[0]:
                        best = (v, s, fx, fy, big, small)
    v, s, fx, fy, big, small = best
    if give_up_above is not None and v > give_up_above:
        return v, None
    target = small.whole
    ds, df = MAX_CROP / 4, 0.5
    for _ in range(4):  # refine around the best registration, halving the steps
        ds, df = ds / 2, df / 2
        centre = (s, fx, fy)
        for s2 in (centre[0] - ds, centre[0], centre[0] + ds):
            if not 1 - MAX_CROP - 1e-9 <= s2 <= 1 + 1e-9:
                continue
            for fx2 in (centre[1] - df, centre[1], centre[1] + df):
                for fy2 in (centre[2] - df, centre[2], centre[2] + df):
                    if not (0 <= fx2 <= 1 and 0 <= fy2 <= 1) or (s2, fx2, fy2) == centre:
                        continue
                    v2 = _score(_array(big.image, _crop_box(big.image, min(s2, 1.0), fx2, fy2)), target)
                    if v2 < v:
                        v, s, fx, fy = v2, s2, fx2, fy2
    return v, (big, small, _crop_box(big.image, min(s, 1.0), fx, fy))


class PictureCache:
    """Working copies by embedding id, loaded once from the first readable file of each."""

    def __init__(self, paths: dict[int, list[bytes]], *, max_pixels: int = imaging.DEFAULT_MAX_PIXELS):
        self.paths = paths
        self.max_pixels = max_pixels
        self._pictures: dict[int, Picture | None] = {}

    def get(self, emb_id: int) -> Picture | None:
        if emb_id not in self._pictures:
            pic = None
            for p in self.paths.get(emb_id, ()):
                if os.path.isfile(p):
                    pic = load_picture(p, max_pixels=self.max_pixels)
                    if pic is not None:
                        break
            self._pictures[emb_id] = pic
        return self._pictures[emb_id]
