"""Shared fixtures: a sandboxed environment for every test, a tiny real open_clip model with random weights,
the default architecture's weights in an offline Hugging Face cache, image folders, the shapes sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHAPES_SAMPLE = REPO.parent / "shared" / "shapes-sample"  # the team's shared folder, beside the checkout

# -- the environment: no test reads or writes the user's real directories -------------------------------------
# knobs of the test suite itself (sizes of stress runs, where the sample is): a user's values are kept
TEST_KNOBS = frozenset({"CLIPSEARCH_SHAPES_SAMPLE", "CLIPSEARCH_STRESS_FILES", "CLIPSEARCH_STRESS_FILES_CI",
                        "CLIPSEARCH_MULTIFRAME_FILES", "CLIPSEARCH_CRASH_ROUNDS", "CLIPSEARCH_CRASH_SEED",
                        "CLIPSEARCH_WRITE_SCREENSHOT"})
# other names for the Hugging Face cache that huggingface_hub or transformers would honour
HF_ALIASES = ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE")


def sandbox_environment(mp: pytest.MonkeyPatch, base: Path) -> dict[str, str]:
    """Point HOME, the XDG directories and the Hugging Face cache under `base`; no CLIPSEARCH_* settings
    (library, model, config file, crash points) of the user's; Hugging Face offline. Children started by
    run_cli inherit it. Returns the variables set."""
    home = base / "home"
    env = {
        "HOME": home, "XDG_CACHE_HOME": home / ".cache", "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CONFIG_HOME": home / ".config", "XDG_STATE_HOME": home / ".local" / "state",
        "HF_HOME": base / "hf", "HF_HUB_CACHE": base / "hf" / "hub",
    }
    for d in env.values():
        d.mkdir(parents=True, exist_ok=True)
    env = {k: str(v) for k, v in env.items()}
    env["HF_HUB_OFFLINE"] = "1"
    for k, v in env.items():
        mp.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("CLIPSEARCH_") and k not in TEST_KNOBS] + list(HF_ALIASES):
        mp.delenv(k, raising=False)
    # huggingface_hub reads these once, at import: a module imported by an earlier test holds that test's values
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        for name, value in (("HF_HOME", env["HF_HOME"]), ("HF_HUB_CACHE", env["HF_HUB_CACHE"]), ("HF_HUB_OFFLINE", True)):
            if hasattr(constants, name):
                mp.setattr(constants, name, value)
    return env


@pytest.fixture(scope="session", autouse=True)
def _sandbox_session(tmp_path_factory):
    """The same for session- and module-scoped fixtures, which are built before any test's own sandbox."""
    with pytest.MonkeyPatch.context() as mp:
        yield sandbox_environment(mp, tmp_path_factory.mktemp("session-env"))


@pytest.fixture(autouse=True)
def sandbox_env(tmp_path_factory, monkeypatch, _sandbox_session) -> dict[str, str]:
    """Every test gets fresh, empty HOME / XDG / Hugging Face directories (not inside tmp_path, which tests list)."""
    return sandbox_environment(monkeypatch, tmp_path_factory.mktemp("env"))


# -- the shapes sample ----------------------------------------------------------------------------------------
def shapes_sample_path() -> Path:
    """Where the independent shapes sample is: CLIPSEARCH_SHAPES_SAMPLE, else ../shared/shapes-sample next to
    the repository."""
    given = os.environ.get("CLIPSEARCH_SHAPES_SAMPLE")
    return Path(given) if given else SHAPES_SAMPLE


def require_shapes_sample() -> Path:
    """The shapes sample folder, for a test to call first: a missing one fails the test when CI is set in the
    environment (CI must run the quality tests), and skips it elsewhere."""
    path = shapes_sample_path()
    if (path / "scenes.jsonl").is_file() and (path / "images").is_dir():
        return path
    why = f"the shapes sample is not at {path} (set CLIPSEARCH_SHAPES_SAMPLE, or put it at {SHAPES_SAMPLE})"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{why}; CI must run the quality tests", pytrace=False)
    pytest.skip(why)

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


# -- the default architecture in an offline Hugging Face cache ---------------------------------------------------
HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory):
    """(HF_HUB_CACHE, model): the default model's repo at one snapshot, holding ViT-B-32 weights that are random
    but real (open_clip's own architecture), as open_clip's download would have left them."""
    import open_clip
    import torch
    from open_clip.pretrained import get_pretrained_cfg
    from safetensors.torch import save_file

    from clipsearch.encoders import DEFAULT_MODEL

    arch, tag = DEFAULT_MODEL.split(":")
    repo = get_pretrained_cfg(arch, tag)["hf_hub"].strip("/")
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / HF_COMMIT
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(HF_COMMIT)
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "open_clip_model.safetensors"))
    return cache, model


def offline_env(cache: Path) -> dict:
    """Environment for a child that must find the default model's weights in `cache` and nowhere else."""
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home")}


def use_hf_cache(mp: pytest.MonkeyPatch, cache: Path) -> None:
    """The same for this process (huggingface_hub may have read its settings at import already)."""
    for k, v in offline_env(cache).items():
        mp.setenv(k, v)
    import huggingface_hub.constants as constants

    mp.setattr(constants, "HF_HUB_CACHE", str(cache))
    mp.setattr(constants, "HF_HOME", str(cache.parent / "home"))
    mp.setattr(constants, "HF_HUB_OFFLINE", True)


def run_cli(*args: str, env: dict | None = None, check: bool = False, input: str | None = None):
    """Run `python -m clipsearch` in a child process, as a user would, in this test's sandboxed environment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "clipsearch", *args], capture_output=True, env=full_env,
                          input=input, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"clipsearch {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
