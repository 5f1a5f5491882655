"""The default ARCH:PRETRAINED path, offline: open_clip's own resolution against a Hugging Face cache
that a test builds, holding a randomly initialised checkpoint of the default architecture."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import make_image, offline_env, run_cli  # noqa: E402  (hf_cache: a conftest fixture)

from clipsearch.encoders import DEFAULT_MODEL  # noqa: E402


def test_default_model_loads_through_open_clip_from_the_cache(tmp_path, hf_cache):
    cache, model = hf_cache
    photos = tmp_path / "photos"
    for i in range(4):
        make_image(photos / f"p{i}.png", i, size=(240, 200))
    lib = tmp_path / "lib"
    proc = run_cli("index", str(photos), "--library", str(lib), "-q", "--json", "--precision", "fp32",
                   env=offline_env(cache), check=True)
    assert json.loads(proc.stdout)["added"] == 4
    status = json.loads(run_cli("status", "--library", str(lib), "--json", env=offline_env(cache), check=True).stdout)
    assert status["model"] == DEFAULT_MODEL and status["dim"] == 512

    # the stored vectors are the cached checkpoint's own: same as embedding with that model here
    import open_clip
    import torch
    from PIL import Image

    _, _, preprocess = open_clip.create_model_and_transforms(DEFAULT_MODEL.split(":")[0], pretrained=None)
    model.eval()
    with torch.no_grad():
        want = model.encode_image(preprocess(Image.open(photos / "p1.png").convert("RGB"))[None], normalize=True)[0]
    con = sqlite3.connect(lib / "library.db")
    blob = con.execute("SELECT e.vector FROM files f JOIN embeddings e ON e.id=f.embedding_id WHERE f.path=?",
                       (bytes(photos / "p1.png"),)).fetchone()[0]
    con.close()
    got = np.frombuffer(blob, "<f4")
    assert float(got @ want.numpy()) > 0.9999

    q = run_cli("query", "a photo of a hand", "--library", str(lib), "--json", "-k", "2", env=offline_env(cache), check=True)
    assert len(json.loads(q.stdout)) == 2


def test_missing_cache_entry_is_a_clear_error_never_random_weights(tmp_path, hf_cache):
    cache, _ = hf_cache
    photos = tmp_path / "photos"
    make_image(photos / "p.png", 1)
    lib = tmp_path / "lib"
    proc = run_cli("index", str(photos), "--library", str(lib), "--model", "ViT-B-32:laion2b_e16", "-q",
                   env=offline_env(cache))
    assert proc.returncode == 1
    err = proc.stderr
    assert "ViT-B-32:laion2b_e16" in err and "Hugging Face cache" in err and "Traceback" not in err
    con = sqlite3.connect(lib / "library.db")
    assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0
    assert con.execute("SELECT value FROM meta WHERE key='model_fingerprint'").fetchone() is None
    con.close()

    proc = run_cli("index", str(photos), "--library", str(tmp_path / "lib2"), "--model", "ViT-B-32:no_such_tag", "-q",
                   env=offline_env(cache))
    assert proc.returncode == 1 and "unknown pretrained tag" in proc.stderr


def test_local_weights_file_for_an_architecture(tmp_path, hf_cache):
    """--model ARCH:/path/to/weights.safetensors loads strictly; wrong weights are refused."""
    cache, model = hf_cache
    from clipsearch.encoders import load_encoder
    from clipsearch.errors import ModelUnavailableError

    arch = DEFAULT_MODEL.split(":")[0]
    weights = next((cache).rglob("open_clip_model.safetensors"))
    enc = load_encoder(f"{arch}:{weights}", precision="fp32")
    assert enc.dim == 512 and enc.fingerprint["weights"].startswith("sha256:")
    with pytest.raises(ModelUnavailableError):
        load_encoder(f"RN50:{weights}")
