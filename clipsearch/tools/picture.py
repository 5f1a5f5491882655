"""Is this the same picture? A pixel check of two images that the model's vectors call close.

CLIP-like vectors are built to forget what a duplicate finder must see: the demo model gives two
different renders of "a small red circle at the top" a cosine of 0.9995, as high as a JPEG copy of
one of them (benchmarks/duplicates.py). So the vectors only propose candidates, and this module decides.

Each image is decoded as the indexer decodes it (EXIF orientation applied, so a rotated copy that says
so in its EXIF matches), shrunk to BASE pixels on its long side and blurred (JPEG ringing and resampling
move edges by a fraction of a pixel), and compared with the other over small crop-like registrations
(one side a crop of the other by up to MAX_CROP of each dimension, anywhere in the frame), both
resampled to SIDE x SIDE. The registration is searched by the mean difference, then polished on the
distance itself: the PERCENTILE-th percentile of the per-pixel largest channel difference (0-1).
Re-encoding, resizing and light cropping leave it small; another picture of the same thing differs
somewhere (where an object is, its size, its colour), and at SIDE = 72 (it was 48) a small object's
few pixels still count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import imaging

BASE = 144  # long side of the working copy, pixels
SIDE = 72  # both images are compared at SIDE x SIDE
BLUR = 1.5  # Gaussian radius at SIDE, pixels
PERCENTILE = 99.8
MARGIN = 2  # border pixels (at SIDE) left out of the distance
COARSE_STEPS = 5  # crop scales and places tried before the local search
REFINE_ROUNDS = 5
FINAL_ROUNDS = 3
MAX_CROP = 0.06  # a "light crop": up to 6 % off each dimension
MAX_ASPECT_CHANGE = 0.10  # pictures whose aspect ratios differ more are different pictures
MAX_MEAN_SHIFT = 0.15  # a light crop moves the mean colour less (6 % of the frame); more: another picture
PIXEL_THRESHOLD = 0.049  # the default distance at or below which two images are the same picture (benchmarks/duplicates.py)
MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass
class Picture:
    image: object  # PIL RGB, BASE on its long side, blurred (Gaussian, BLUR at SIDE scale)
    aspect: float  # width / height as decoded (EXIF orientation applied)
    _whole: np.ndarray | None = None

    @property
    def whole(self) -> np.ndarray:
        """The whole picture at SIDE x SIDE (computed once)."""
        if self._whole is None:
            self._whole = _array(self.image)
        return self._whole


def load_picture(path: bytes | str, *, max_pixels: int = imaging.DEFAULT_MAX_PIXELS) -> Picture | None:
    """The working copy of an image file, or None when it cannot be read or decoded now (offline, gone)."""
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
    return _working_copy(img)


def from_image(img) -> Picture:
    """A Picture from a decoded PIL image (for callers that hold pixels already)."""
    return _working_copy(img.convert("RGB"))


def _working_copy(img) -> Picture:
    """Shrunk to BASE on its long side and blurred once, at that scale, as much as BLUR is at SIDE: each
    registration below only resamples a box of it (blurring every resampled copy cost 5x as much)."""
    from PIL import Image, ImageFilter

    w, h = img.size
    scale = BASE / max(w, h)
    small = img.resize((max(2, round(w * scale)), max(2, round(h * scale))), Image.BOX)
    return Picture(small.filter(ImageFilter.GaussianBlur(BLUR * BASE / SIDE)), w / h)


def _array(img, box=None) -> np.ndarray:
    from PIL import Image

    return np.asarray(img.resize((SIDE, SIDE), Image.BOX, box=box), dtype=np.float32) * np.float32(1 / 255)


_RANK = int(round((SIDE - 2 * MARGIN) ** 2 * PERCENTILE / 100)) - 1


def _score(a: np.ndarray, b: np.ndarray) -> float:
    m = MARGIN
    d = np.abs(a[m:-m, m:-m] - b[m:-m, m:-m])
    d = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]).ravel()  # 5x faster than .max(axis=2)
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
    `give_up_above`, that value is returned without refining (a pair that is surely not the same picture).

    The registration is found by the mean difference (smooth in the crop's scale and place, so a local
    search converges; the percentile below is flat almost everywhere and stopped a search 5 % short of a
    5 % crop); the distance is then the PERCENTILE-th percentile at that registration, away from a
    MARGIN-pixel border (where blurring a crop and cropping a blurred picture differ)."""
    if abs(np.log(a.aspect / b.aspect)) > MAX_ASPECT_CHANGE:
        return float("inf"), None
    shift = float(np.abs(a.whole.mean(axis=(0, 1)) - b.whole.mean(axis=(0, 1))).max())
    if shift > MAX_MEAN_SHIFT:
        return max(shift, 2 * MAX_MEAN_SHIFT), None  # surely different, found without registering

    def mean_diff(big, box, target) -> float:
        return float(np.abs(_array(big.image, box) - target).mean())

    best = (float("inf"), 1.0, 0.5, 0.5, a, b)
    steps = np.linspace(0.0, 1.0, COARSE_STEPS)
    for big, small in ((a, b), (b, a)):  # `small` is (maybe) a crop of `big`
        target = small.whole
        for s in np.linspace(1.0, 1 - MAX_CROP, COARSE_STEPS):
            for fx in ((0.5,) if s == 1.0 else steps):
                for fy in ((0.5,) if s == 1.0 else steps):
                    v = mean_diff(big, _crop_box(big.image, s, fx, fy), target)
                    if v < best[0]:
                        best = (v, float(s), float(fx), float(fy), big, small)
    v, s, fx, fy, big, small = best
    target = small.whole
    if give_up_above is not None:
        coarse = _score(_array(big.image, _crop_box(big.image, s, fx, fy)), target)
        if coarse > give_up_above:
            return coarse, None
    ds, df = MAX_CROP / (COARSE_STEPS - 1), 1.0 / (COARSE_STEPS - 1)
    v, (s, fx, fy) = _local_search(lambda box: mean_diff(big, box, target), big.image, (s, fx, fy), v,
                                   ds / 2, df / 2, REFINE_ROUNDS)
    # the last steps on the distance itself: the mean difference's best and the percentile's lie apart by a
    # fraction of a pixel, which costs a high-contrast edge a few levels
    ds, df = ds / 2 ** (REFINE_ROUNDS - 2), df / 2 ** (REFINE_ROUNDS - 2)
    v, (s, fx, fy) = _local_search(lambda box: _score(_array(big.image, box), target), big.image, (s, fx, fy),
                                   _score(_array(big.image, _crop_box(big.image, min(s, 1.0), fx, fy)), target),
                                   ds, df, FINAL_ROUNDS)
    return v, (big, small, _crop_box(big.image, min(s, 1.0), fx, fy))


def _local_search(objective, img, start: tuple[float, float, float], value: float, ds: float, df: float,
                  rounds: int) -> tuple[float, tuple[float, float, float]]:
    """Pattern search of a crop (scale s, place fx, fy) around `start`, halving the steps each round."""
    s, fx, fy = start
    for _ in range(rounds):
        centre = (s, fx, fy)
        for s2 in (centre[0] - ds, centre[0], centre[0] + ds):
            if not 1 - MAX_CROP - 1e-9 <= s2 <= 1 + 1e-9:
                continue
            for fx2 in (centre[1] - df, centre[1], centre[1] + df):
                for fy2 in (centre[2] - df, centre[2], centre[2] + df):
                    if not (0 <= fx2 <= 1 and 0 <= fy2 <= 1) or (s2, fx2, fy2) == centre:
                        continue
                    v2 = objective(_crop_box(img, min(s2, 1.0), fx2, fy2))
                    if v2 < value:
                        value, s, fx, fy = v2, s2, fx2, fy2
        ds, df = ds / 2, df / 2
    return value, (s, fx, fy)


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
