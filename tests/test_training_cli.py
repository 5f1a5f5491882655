"""`clipsearch train` as a user runs it: --out never overwrites a checkpoint silently, the same --seed
gives the same weights, --max-minutes says it is not reproducible, open_clip's notices stay quiet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.training import shapes
from conftest import TINY_MODEL_CFG, run_cli, write_checkpoint


@pytest.fixture
def user_env(tmp_path, monkeypatch) -> dict:
    """HOME, XDG dirs, caches and the config file all inside tmp_path (for CliRunner and run_cli alike)."""
    home = tmp_path / "home"
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
           "HF_HOME": str(home / "hf"), "CLIPSEARCH_HOME": str(home / "clipsearch"),
           "CLIPSEARCH_CONFIG": str(home / "no-config.toml")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("captioned")
    shapes.write_dataset(d, 12, seed=3)
    return d


@pytest.fixture(scope="module")
def arch(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("arch") / "tiny.json"
    p.write_text(json.dumps(TINY_MODEL_CFG))
    return p


def _train_args(data, arch, out, *extra):
    return ["train", str(data), "--arch", str(arch), "--out", str(out), "--epochs", "1", "--batch-size", "6",
            "--val-fraction", "0", *extra]


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _refused(r, out: Path):
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit)  # a click error, not a crash
    assert "Traceback" not in r.output
    assert str(out) in r.output


@pytest.mark.parametrize("kind", ["checkpoint", "config only", "weights only", "other files"])
def test_train_refuses_an_out_dir_that_is_not_new_or_empty(user_env, data, arch, tmp_path, kind):
    out = tmp_path / "out"
    if kind == "other files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        write_checkpoint(out)
        if kind == "config only":
            (out / "open_clip_model.safetensors").unlink()
        elif kind == "weights only":
            (out / "open_clip_config.json").unlink()
    before = _snapshot(out)
    r = CliRunner().invoke(cli, _train_args(data, arch, out))
    _refused(r, out)
    assert ("already holds a checkpoint" if kind != "other files" else "is not empty") in r.output
    assert "--overwrite" in r.output
    assert _snapshot(out) == before


def test_train_writes_into_an_empty_dir_then_refuses_it_then_overwrites_when_told(user_env, data, arch, tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    r = CliRunner().invoke(cli, _train_args(data, arch, out, "--seed", "1"))
    assert r.exit_code == 0, r.output
    first = _snapshot(out)
    assert set(first) == {"open_clip_config.json", "open_clip_model.safetensors"}

    r = CliRunner().invoke(cli, _train_args(data, arch, out, "--seed", "2"))  # the usual slip: same --out again
    _refused(r, out)
    assert "already holds a checkpoint" in r.output
    assert _snapshot(out) == first

    r = CliRunner().invoke(cli, _train_args(data, arch, out, "--seed", "2", "--overwrite"))
    assert r.exit_code == 0, r.output
    second = _snapshot(out)
    assert second["open_clip_model.safetensors"] != first["open_clip_model.safetensors"]
    assert json.loads(second["open_clip_config.json"])["clipsearch"]["options"]["seed"] == 2


def test_max_minutes_help_says_a_cut_short_run_is_not_reproducible(user_env):
    r = CliRunner().invoke(cli, ["train", "--help"])
    assert r.exit_code == 0
    help_text = " ".join(r.output.split())
    i = help_text.index("--max-minutes")
    assert "not reproducible" in help_text[i:help_text.index("--overwrite", i)]


def test_same_seed_same_weights_from_the_cli(user_env, data, arch, tmp_path):
    """Three child processes: the same --seed twice gives byte-identical weights, another seed others."""
    outs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        out = tmp_path / name
        p = run_cli(*_train_args(data, arch, out, "--seed", seed, "--threads", "1", "--json"), env=user_env, check=True)
        assert json.loads(p.stdout)["torch_threads"] == 1  # the CLI set the thread count
        # open_clip's notices that a new model has no weights are dropped (the CLI's logging filter)
        assert "no CLIP weights found" not in p.stderr and "initialized randomly" not in p.stderr, p.stderr
        outs[name] = (out / "open_clip_model.safetensors").read_bytes()
    assert outs["a"] == outs["b"]
    assert outs["a"] != outs["c"]


def test_inspect_keeps_open_clips_random_init_notices_quiet(user_env, tmp_path):
    ckpt = write_checkpoint(tmp_path / "m")
    p = run_cli("inspect", "--model", str(ckpt), env=user_env, check=True)
    assert "embed dim    32" in p.stdout
    assert p.stderr.strip() == "", p.stderr
