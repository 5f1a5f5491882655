"""Is this the same picture? A pixel check of two images that the model's vectors call close.

CLIP-like vectors are built to forget what a duplicate finder must see: the demo model gives two
different renders of "a small red circle at the top" a cosine of 0.9995, as high as a JPEG copy of
one of them (benchmarks/duplicates.py). So the vectors only propose candidates, and this module decides.

Each image is decoded as the indexer decodes it (EXIF orientation applied, so a rotated copy that says
so in its EXIF matches) and shrunk to BASE pixels on its long side. Two pictures are compared with their
pixels' scale kept: frame to frame (re-encoded, converted, resized as a whole), or, when one's size is a
light crop of the other's (up to MAX_CROP off each dimension), as that crop placed anywhere in the frame.
Both are resampled to SIDE x SIDE and blurred (JPEG ringing and resampling move edges by a fraction of a
pixel); the distance is the PERCENTILE-th percentile of the per-pixel largest channel difference (0-1).
Re-encoding, resizing and light cropping leave it small; another picture of the same thing differs
somewhere (where an object is, its size, its colour).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import imaging

BASE = 288  # long side of the working copy, pixels
SIDE = 72  # both images are compared at SIDE x SIDE
BLUR = 1.5  # Gaussian radius at SIDE, pixels
PERCENTILE = 99.8
MARGIN = 2  # border pixels (at SIDE) left out of the distance
COARSE_STEPS = 5  # crop places tried along each axis before the local search
REFINE_ROUNDS = 5
FINAL_ROUNDS = 3
MAX_CROP = 0.06  # a "light crop": up to 6 % off each dimension
MAX_ASPECT_CHANGE = 0.10  # pictures whose aspect ratios differ more are different pictures
MAX_RESIZE_ASPECT_CHANGE = 0.02  # a resize keeps the aspect ratio but for rounding to whole pixels
MAX_MEAN_SHIFT = 0.15  # a light crop moves the mean colour less (6 % of the frame); more: another picture
PIXEL_THRESHOLD = 0.049  # the default distance at or below which two images are the same picture (benchmarks/duplicates.py)
MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass
class Picture:
    image: object  # PIL RGB, BASE on its long side
    size: tuple[int, int]  # width and height as decoded (EXIF orientation applied), pixels
    _whole: np.ndarray | None = None

    @property
    def aspect(self) -> float:
        return self.size[0] / self.size[1]

    @property
    def whole(self) -> np.ndarray:
        """The whole picture at SIDE x SIDE, blurred (computed once)."""
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
        img, (w, h) = imaging.decode(data, max_pixels=max_pixels, draft=4 * BASE)
    except (OSError, imaging.ImageError):
        return None
    if min(img.size) < 2:
        return None
    # the file's own size (a draft decode is smaller), turned as its EXIF orientation turned the pixels:
    # crop_scales compares the sizes of two files
    turned = (img.width > img.height) != (w > h) and img.width != img.height
    return _working_copy(img, (h, w) if turned else (w, h))


def from_image(img) -> Picture:
    """A Picture from a decoded PIL image (for callers that hold pixels already)."""
    return _working_copy(img.convert("RGB"))


def _working_copy(img, size: tuple[int, int] | None = None) -> Picture:
    from PIL import Image

    w, h = img.size
    scale = BASE / max(w, h)
    return Picture(img.resize((max(2, round(w * scale)), max(2, round(h * scale))), Image.BOX), size or (w, h))


def _array(img, box=None) -> np.ndarray:
    """A box of a working copy resampled to SIDE x SIDE, then blurred (blurring after resampling gives a crop
    and its original the same blur at SIDE, whatever share of the frame the crop keeps)."""
    from PIL import Image, ImageFilter

    small = img.resize((SIDE, SIDE), Image.BOX, box=box).filter(ImageFilter.GaussianBlur(BLUR))
    return np.asarray(small, dtype=np.float32) * np.float32(1 / 255)


_RANK = int(round((SIDE - 2 * MARGIN) ** 2 * PERCENTILE / 100)) - 1


def _score(a: np.ndarray, b: np.ndarray) -> float:
    m = MARGIN
    d = np.abs(a[m:-m, m:-m] - b[m:-m, m:-m])
    d = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]).ravel()  # 5x faster than .max(axis=2)
    return float(np.partition(d, _RANK)[_RANK])


def _crop_box(img, sx: float, sy: float, fx: float, fy: float) -> tuple[float, float, float, float]:
    """The box of `img` that keeps sx, sy of its width and height, placed at fx, fy (0: left or top, 1: right or
    bottom)."""
    w, h = img.size
    x0, y0 = (1 - sx) * w * fx, (1 - sy) * h * fy
    return (x0, y0, x0 + sx * w, y0 + sy * h)


def crop_scales(big: Picture, small: Picture) -> tuple[float, float] | None:
    """The share of big's width and height that `small` keeps, if `small` can be a light crop of it: a crop
    removes pixels and keeps their scale, so the two sizes fix it (each side at least 1 - MAX_CROP of big's,
    one side at least shorter)."""
    (wb, hb), (ws, hs) = big.size, small.size
    sx, sy = ws / wb, hs / hb
    if (ws, hs) == (wb, hb) or not (1 - MAX_CROP <= sx <= 1 and 1 - MAX_CROP <= sy <= 1):
        return None
    return sx, sy


def distance(a: Picture, b: Picture, *, give_up_above: float | None = None) -> float:
    return registered(a, b, give_up_above=give_up_above)[0]


def registered(a: Picture, b: Picture, *, give_up_above: float | None = None):
    """How different two pictures are (0 = identical), and the registration that says so: (big, small, box of
    big that small is); inf when their shapes are too different to be one picture.

    Two hypotheses, each with the pixels' scale kept: frame to frame (a copy re-encoded, converted, resized
    as a whole, or rotated back by its EXIF orientation), and, when one picture's size is a light crop of the
    other's, that crop, placed anywhere. A light crop that was then also resized is not recognised: allowing
    it (any scale from 94 % to 100 %) made two renders of one caption whose objects differ a little in size
    and place indistinguishable from a crop of one another.

    The crop's place is searched by the mean difference (smooth in the place, so a local search converges;
    the percentile is flat almost everywhere), then polished on the distance itself: the PERCENTILE-th
    percentile of the per-pixel largest channel difference, away from a MARGIN-pixel border (where a box
    edge that falls between pixels resamples differently). When the coarse placement is already worse than
    `give_up_above`, that value is returned without refining (a pair that is surely not the same picture)."""
    aspect_change = abs(np.log(a.aspect / b.aspect))
    if aspect_change > MAX_ASPECT_CHANGE:
        return float("inf"), None
    shift = float(np.abs(a.whole.mean(axis=(0, 1)) - b.whole.mean(axis=(0, 1))).max())
    if shift > MAX_MEAN_SHIFT:
        return max(shift, 2 * MAX_MEAN_SHIFT), None  # surely different, found without registering
    best: tuple[float, tuple | None] = (float("inf"), None)
    if aspect_change <= MAX_RESIZE_ASPECT_CHANGE:
        best = (_score(a.whole, b.whole), (a, b, (0.0, 0.0) + tuple(map(float, a.image.size))))
    for big, small in ((a, b), (b, a)):
        scales = crop_scales(big, small)
        if scales is not None:
            found = _crop_distance(big, small, scales, give_up_above)
            if found[0] < best[0]:
                best = found
    return best


def _crop_distance(big: Picture, small: Picture, scales: tuple[float, float], give_up_above: float | None):
    sx, sy = scales
    target = small.whole

    def crop(x: float, y: float) -> np.ndarray:
        return _array(big.image, _crop_box(big.image, sx, sy, x, y))

    def mean_diff(x: float, y: float) -> float:
        return float(np.abs(crop(x, y) - target).mean())

    def score(x: float, y: float) -> float:
        return _score(crop(x, y), target)

    steps = np.linspace(0.0, 1.0, COARSE_STEPS)
    v, fx, fy = min((mean_diff(x, y), float(x), float(y)) for x in steps for y in steps)
    if give_up_above is not None:
        coarse = score(fx, fy)
        if coarse > give_up_above:
            return coarse, None
    step = 1.0 / (COARSE_STEPS - 1)
    v, (fx, fy) = _local_search(mean_diff, (fx, fy), v, step / 2, REFINE_ROUNDS)
    # the last steps on the distance itself: the mean difference's best and the percentile's lie apart by a
    # fraction of a pixel, which costs a high-contrast edge a few levels
    step /= 2 ** (REFINE_ROUNDS - 2)
    v, (fx, fy) = _local_search(score, (fx, fy), score(fx, fy), step, FINAL_ROUNDS)
    return v, (big, small, _crop_box(big.image, sx, sy, fx, fy))


def _local_search(objective, start: tuple[float, float], value: float, step: float,
                  rounds: int) -> tuple[float, tuple[float, float]]:
    """Pattern search of a crop's place (fx, fy in 0-1) around `start`, halving the step each round."""
    fx, fy = start
    for _ in range(rounds):
        centre = (fx, fy)
        for x in (centre[0] - step, centre[0], centre[0] + step):
            for y in (centre[1] - step, centre[1], centre[1] + step):
                if not (0 <= x <= 1 and 0 <= y <= 1) or (x, y) == centre:
                    continue
                v2 = objective(x, y)
                if v2 < value:
                    value, fx, fy = v2, x, y
        step /= 2
    return value, (fx, fy)


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
