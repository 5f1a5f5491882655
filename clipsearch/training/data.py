"""Training material: a captioned folder read into memory, and the image preprocessing of a model.

A captioned folder holds `captions.csv` (header `file,caption`; `file` relative to the folder, or
to its `images/` subfolder as in shapes-sample) and optionally `scenes.jsonl` (the shapes domain's
metadata, one JSON scene a line keyed by `file`). Images are held as uint8 tensors after the
model's eval resize and crop; `normalize_batch` turns a batch of them into model input.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CaptionedItem:
    file: str
    caption: str
    scene: dict | None = None


@dataclass
class Dataset:
    """Training material in memory: uint8 images (n, 3, H, W) after the model's resize, captions, scenes."""

    images: Any
    captions: list[str]
    scenes: list[dict] | None = None


def resolve_image_path(folder: Path, name: str) -> Path:
    p = folder / name
    if p.is_file():
        return p
    q = folder / "images" / name
    if q.is_file():
        return q
    return p


def read_captioned_folder(folder: str | Path) -> list[CaptionedItem]:
    """Rows of captions.csv (file, caption), with scenes from scenes.jsonl when present."""
    folder = Path(folder)
    csv_path = folder / "captions.csv"
    if not csv_path.is_file():
        raise ConfigError(f"{folder} has no captions.csv (a header `file,caption`, one image a line)")
    items: list[CaptionedItem] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "file" not in reader.fieldnames or "caption" not in reader.fieldnames:
            raise ConfigError(f"{csv_path} must have a header line `file,caption`")
        for row in reader:
            if row["file"] and row["caption"] is not None:
                items.append(CaptionedItem(row["file"], row["caption"].strip()))
    if not items:
        raise ConfigError(f"{csv_path} lists no images")
    scenes_path = folder / "scenes.jsonl"
    if scenes_path.is_file():
        scenes = {}
        with open(scenes_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    s = json.loads(line)
                    scenes[s["file"]] = s
        for it in items:
            it.scene = scenes.get(it.file)
    missing = [it.file for it in items if not resolve_image_path(folder, it.file).is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} image(s) listed in {csv_path} do not exist, e.g. {missing[0]}")
    return items


def texts_universe(ds: Dataset) -> list[str]:
    """Every text training can feed the tokenizer: the captions, plus the shapes domain's words when
    the dataset has scenes (its augmentation writes partial descriptions)."""
    from .shapes import domain_vocabulary

    texts = list(ds.captions)
    if ds.scenes is not None:
        texts += domain_vocabulary() + ["object", "thing", "one"]
    return texts


def pil_transform(preprocess_cfg: dict):
    """The deterministic PIL part (resize, crop, RGB) of the eval preprocess of this config."""
    import open_clip
    from torchvision import transforms as T

    size = preprocess_cfg.get("size", 224)
    tf = open_clip.image_transform(
        size,
        is_train=False,
        mean=preprocess_cfg.get("mean"),
        std=preprocess_cfg.get("std"),
        resize_mode=preprocess_cfg.get("resize_mode"),
        interpolation=preprocess_cfg.get("interpolation"),
        fill_color=preprocess_cfg.get("fill_color", 0),
    )
    steps = [t for t in tf.transforms if not isinstance(t, (T.ToTensor, T.Normalize))]
    return T.Compose(steps)


def preprocess_to_uint8(images: Sequence, preprocess_cfg: dict):
    """PIL images -> uint8 tensor (n, 3, H, W) after the eval resize/crop (no normalisation)."""
    import torch

    tf = pil_transform(preprocess_cfg)
    arrs = [np.asarray(tf(im.convert("RGB")), dtype=np.uint8) for im in images]
    if not arrs:
        size = preprocess_cfg.get("size", 224)
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def load_folder_images(folder: Path, items: Sequence[CaptionedItem], preprocess_cfg: dict,
                       progress: Callable[[int], None] | None = None):
    """The folder's images as one uint8 tensor (n, 3, H, W), in the order of `items`."""
    import torch
    from PIL import Image

    tf = pil_transform(preprocess_cfg)
    out = None
    for i, it in enumerate(items):
        with Image.open(resolve_image_path(folder, it.file)) as im:
            arr = np.asarray(tf(im.convert("RGB")), dtype=np.uint8)
        if out is None:
            out = torch.empty((len(items), 3, arr.shape[0], arr.shape[1]), dtype=torch.uint8)
        out[i] = torch.from_numpy(np.array(arr)).permute(2, 0, 1)
        if progress is not None:
            progress(1)
    return out


def normalize_batch(u8, preprocess_cfg: dict):
    """uint8 images (n, 3, H, W) -> float model input, normalised with the config's mean and std."""
    import torch

    mean = torch.tensor(preprocess_cfg.get("mean") or OPENAI_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg.get("std") or OPENAI_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (u8.float().div_(255.0) - mean) / std
