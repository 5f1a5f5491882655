"""A renderer of the "shapes" domain (see the project README and ../shared/shapes-spec.md).

Every image is 224 x 224 RGB on one of four solid backgrounds, with one object (60 %) or two
(40 %) in distinct cells of a 3 x 3 grid, with distinct (color, shape). Shapes are drawn at 4x
resolution as coverage masks and box-downsampled (anti-aliasing), composited over the background,
then every pixel gets Gaussian noise (sigma 4). Files are PNG or JPEG quality 90 (half each).

Scenes are plain dicts in the schema of shapes-sample/scenes.jsonl:
    {"background", "objects": [{"shape", "color", "size", "cell": [row, col], "r", "dx", "dy",
     "jitter": [dr, dg, db]}], "file", "caption"}

Image i of a dataset made with seed s depends only on (s, i): datasets are reproducible and can be
rendered in parallel or in part.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

SIZE = 224
SUPERSAMPLE = 4
NOISE_SIGMA = 4.0
JPEG_QUALITY = 90
CELL_CENTRES = (40, 112, 184)
POS_JITTER = 6.0
COLOR_JITTER = 15
SMALL_R = (14.0, 20.0)
LARGE_R = (30.0, 40.0)
P_ONE_OBJECT = 0.6

BACKGROUNDS = {
    "white": (245, 245, 245),
    "light gray": (200, 200, 200),
    "dark gray": (70, 70, 70),
    "beige": (235, 222, 190),
}
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "pink": (245, 120, 180),
    "brown": (130, 80, 40),
}
SHAPES = ("circle", "square", "diamond", "triangle", "star", "cross")
SIZES = ("small", "large")
PHRASES = {
    (0, 0): "in the top left",
    (0, 1): "at the top",
    (0, 2): "in the top right",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "in the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right",
}


# --------------------------------------------------------------------------- captions

def describe(obj: dict) -> str:
    """`a {size} {color} {shape} {phrase}` for one object."""
    return f"a {obj['size']} {obj['color']} {obj['shape']} {PHRASES[tuple(obj['cell'])]}"


def reading_order(objects: Iterable[dict]) -> list[dict]:
    return sorted(objects, key=lambda o: (o["cell"][0], o["cell"][1]))


def caption_for(scene: dict) -> str:
    """The spec's caption: object descriptions in reading order joined by ' and '."""
    return " and ".join(describe(o) for o in reading_order(scene["objects"]))


def partial_description(obj: dict, *, size: bool, color: bool, shape: bool, position: bool) -> str:
    """A description of one object with some attributes left out, in caption word order."""
    words = ["a"]
    if size:
        words.append(obj["size"])
    if color:
        words.append(obj["color"])
    words.append(obj["shape"] if shape else "shape")
    if position:
        words.append(PHRASES[tuple(obj["cell"])])
    return " ".join(words)


def domain_vocabulary() -> list[str]:
    """Every word a caption or partial description of this domain can contain."""
    words = {"a", "and", "shape"}
    words.update(SIZES)
    for name in list(COLORS) + list(SHAPES) + list(PHRASES.values()):
        words.update(name.split())
    return sorted(words)


# --------------------------------------------------------------------------- scenes

def random_scene(rng: np.random.Generator) -> dict:
    """Draw one scene (without file name) following the spec's distributions."""
    n = 1 if rng.random() < P_ONE_OBJECT else 2
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    cells = rng.choice(9, size=n, replace=False)
    pairs = rng.choice(len(COLORS) * len(SHAPES), size=n, replace=False)
    objects = []
    for cell, pair in zip(cells, pairs):
        color = list(COLORS)[int(pair) // len(SHAPES)]
        shape = SHAPES[int(pair) % len(SHAPES)]
        size = SIZES[int(rng.integers(2))]
        lo, hi = SMALL_R if size == "small" else LARGE_R
        objects.append({
            "shape": shape,
            "color": color,
            "size": size,
            "cell": [int(cell) // 3, int(cell) % 3],
            "r": float(rng.uniform(lo, hi)),
            "dx": float(rng.uniform(-POS_JITTER, POS_JITTER)),
            "dy": float(rng.uniform(-POS_JITTER, POS_JITTER)),
            "jitter": [int(v) for v in rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)],
        })
    scene = {"background": background, "objects": objects}
    scene["caption"] = caption_for(scene)
    return scene


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[list[tuple[float, float]]]:
    """The shape as one or more polygons (image coordinates, y down)."""
    if shape == "square":
        h = r / math.sqrt(2.0)
        return [[(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]]
    if shape == "diamond":
        return [[(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]]
    if shape == "triangle":
        return [[(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a)))
        return [pts]
    if shape == "cross":
        t = 0.2 * r
        return [
            [(cx - r, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx - r, cy + t)],
            [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy + r), (cx - t, cy + r)],
        ]
    raise ValueError(f"unknown shape {shape!r}")


def coverage_mask(obj: dict) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one object on the 224 x 224 canvas (float32)."""
    from PIL import Image, ImageDraw

    s = SUPERSAMPLE
    row, col = obj["cell"]
    cx = CELL_CENTRES[col] + obj["dx"]
    cy = CELL_CENTRES[row] + obj["dy"]
    r = obj["r"]
    # draw only the object's bounding box (plus a margin) at s x resolution
    x0 = max(0, int(math.floor(cx - r)) - 2)
    y0 = max(0, int(math.floor(cy - r)) - 2)
    x1 = min(SIZE, int(math.ceil(cx + r)) + 2)
    y1 = min(SIZE, int(math.ceil(cy + r)) + 2)
    mask = np.zeros((SIZE, SIZE), np.float32)
    if x1 <= x0 or y1 <= y0:
        return mask
    big = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(big)
    # pixel (i, j) of the big image covers [i/s, (i+1)/s) in canvas units, its centre at (i+0.5)/s
    def tr(x: float, y: float) -> tuple[float, float]:
        return ((x - x0) * s - 0.5, (y - y0) * s - 0.5)

    if obj["shape"] == "circle":
        (ax, ay), (bx, by) = tr(cx - r, cy - r), tr(cx + r, cy + r)
        draw.ellipse([ax, ay, bx, by], fill=255)
    else:
        for poly in _polygon(obj["shape"], cx, cy, r):
            draw.polygon([tr(x, y) for x, y in poly], fill=255)
    small = np.asarray(big, dtype=np.float32).reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3)) / 255.0
    mask[y0:y1, x0:x1] = small
    return mask


def render_array(scene: dict, rng: np.random.Generator | None = None) -> np.ndarray:
    """The scene as a (224, 224, 3) uint8 array, noise included (noise drawn from rng)."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = BACKGROUNDS[scene["background"]]
    for obj in scene["objects"]:
        a = coverage_mask(obj)[..., None]
        color = np.clip(np.array(COLORS[obj["color"]], np.float32) + np.array(obj["jitter"], np.float32), 0, 255)
        img = img * (1.0 - a) + color * a
    if rng is None:
        rng = np.random.default_rng(0)
    img += rng.normal(0.0, NOISE_SIGMA, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str) -> bytes:
    """PNG or JPEG (quality 90) bytes of an image array."""
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(arr, "RGB")
    if fmt == "png":
        im.save(buf, format="PNG")
    elif fmt == "jpg":
        im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def make_item(seed: int, index: int, prefix: str = "shape") -> tuple[dict, bytes]:
    """Scene and encoded file bytes of image `index` of the dataset with this seed."""
    rng = scene_rng(seed, index)
    scene = random_scene(rng)
    fmt = "png" if rng.random() < 0.5 else "jpg"
    arr = render_array(scene, rng)
    data = encode(arr, fmt)
    scene = {**scene, "file": f"{prefix}_{index:05d}.{fmt}"}
    # key order as in shapes-sample
    scene = {"background": scene["background"], "objects": scene["objects"], "file": scene["file"], "caption": scene["caption"]}
    return scene, data


def make_image(seed: int, index: int):
    """Image `index` of the dataset with this seed, as a decoded PIL RGB image, with its scene."""
    from PIL import Image

    scene, data = make_item(seed, index)
    im = Image.open(io.BytesIO(data))
    im.load()
    return scene, im.convert("RGB")


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 1,
    *,
    prefix: str = "shape",
    start: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """Write n images to out_dir/images/, plus out_dir/captions.csv and out_dir/scenes.jsonl.

    As in shapes-sample, captions.csv and scenes.jsonl name the bare file (`shape_00000.png`);
    readers resolve a name against out_dir/images/ when it is not found in out_dir itself.
    """
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(start, start + n):
        scene, data = make_item(seed, i, prefix)
        (images / scene["file"]).write_bytes(data)
        scenes.append(scene)
        if progress is not None:
            progress(1)
    write_metadata(out, scenes)
    return scenes


def write_metadata(out: Path, scenes: list[dict]) -> None:
    """captions.csv (file,caption) and scenes.jsonl for rendered scenes, as shapes-sample has them."""
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "caption"])
        for s in scenes:
            w.writerow([s["file"], s["caption"]])
    with open(out / "scenes.jsonl", "w", encoding="utf-8") as f:
        for s in scenes:
            f.write(json.dumps(s) + "\n")
