"""The suite's sandbox (conftest.sandbox_environment): every test, and every child run_cli starts, sees fresh
temporary HOME, XDG and Hugging Face directories, no CLIPSEARCH_* settings of the user's, and HF offline."""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import make_image, run_cli  # noqa: E402

DIRS = ("HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "HF_HOME", "HF_HUB_CACHE")


def test_a_cli_child_writes_only_into_the_sandbox(tmp_path, tiny_model):
    """A child `clipsearch index` remembers its weight hash in the user cache: the sandbox's, not ~/.cache."""
    photos = tmp_path / "photos"
    make_image(photos / "a.png", 1)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "clipsearch"
    assert not cache.exists()
    proc = run_cli("index", str(photos), "--library", str(tmp_path / "lib"), "--model", tiny_model, "-q", "--json",
                   check=True)
    assert json.loads(proc.stdout)["added"] == 1
    hashes = json.loads((cache / "weights-sha256.json").read_text())
    assert any(key.startswith(str(Path(tiny_model).resolve())) for key in hashes), hashes


def test_every_test_gets_empty_temporary_directories(tmp_path_factory):
    """Runs after the test above (file order), which wrote into its own user cache: this one's is empty."""
    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()
    base = tmp_path_factory.getbasetemp().resolve()
    for name in DIRS:
        p = Path(os.environ[name]).resolve()
        assert base in p.parents and real_home not in p.parents and p != real_home, (name, p)
        assert not [f for f in p.rglob("*") if f.is_file()], (name, "not empty")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert not [k for k in os.environ if k in ("CLIPSEARCH_HOME", "CLIPSEARCH_MODEL", "CLIPSEARCH_CONFIG")]
    import platformdirs

    assert Path(platformdirs.user_cache_dir("clipsearch")).resolve().parent == Path(os.environ["XDG_CACHE_HOME"]).resolve()
    import click

    assert Path(click.get_app_dir("clipsearch")).resolve().parent == Path(os.environ["XDG_CONFIG_HOME"]).resolve()


def test_huggingface_hub_in_this_process_looks_in_the_sandbox():
    import huggingface_hub.constants as constants

    assert constants.HF_HUB_OFFLINE is True
    assert Path(constants.HF_HUB_CACHE) == Path(os.environ["HF_HUB_CACHE"])
