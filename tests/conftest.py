"""Shared fixtures: a tiny real open_clip model with random weights, image folders, libraries."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_checkpoint(directory: Path, model_cfg: dict = TINY_MODEL_CFG, seed: int = 0) -> Path:
    """A checkpoint directory (open_clip_config.json + safetensors) holding random weights."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CLIP(**model_cfg)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"size": model_cfg["vision_cfg"]["image_size"], "mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                           "resize_mode": "shortest"},
        "clipsearch": {"arch": "tiny-test"},
    }))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(write_checkpoint(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> str:
    return str(write_checkpoint(tmp_path_factory.mktemp("models") / "tiny-other", seed=1))


def make_image(path: Path, seed: int, size=(48, 40), fmt: str | None = None) -> Path:
    """A distinct picture per seed: random blocks of colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize(size, Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    for i in range(6):
        make_image(root / f"img{i}.png", i)
    for i in range(6, 10):
        make_image(root / "sub" / f"img{i}.jpg", i)
    return root


def run_cli(*args: str, env: dict | None = None, check: bool = False, input: str | None = None):
    """Run `python -m clipsearch` in a child process, as a user would."""
    full_env = dict(os.environ)
    full_env.pop("CLIPSEARCH_HOME", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "clipsearch", *args], capture_output=True, env=full_env,
                          input=input, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"clipsearch {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
