"""clipsearch inspect: architecture description and parameter counts."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from clipsearch.training.inspect import describe, format_description


def test_vit_b_32_total_parameters(monkeypatch):
    levels = []
    monkeypatch.setattr(logging.getLogger(), "setLevel", levels.append)  # library code leaves the root logger alone
    d = describe("ViT-B-32")
    assert levels == []
    assert d["parameters"]["total"]["total"] == 151_277_313
    assert d["parameters"]["vision"]["total"] + d["parameters"]["text"]["total"] + 1 == 151_277_313
    assert d["vision"]["patch_size"] == 32 and d["vision"]["layers"] == 12 and d["vision"]["width"] == 768
    assert d["text"]["context_length"] == 77 and d["text"]["vocab_size"] == 49408 and d["text"]["layers"] == 12
    assert d["embed_dim"] == 512
    assert d["logit_scale"]["value"] == pytest.approx(1 / 0.07, rel=1e-4)
    text = format_description(d)
    assert "151,277,313" in text and "patch size 32" in text


def test_inspect_cli_json_on_a_checkpoint(tmp_path):
    import click

    from clipsearch.cli_training import register
    from clipsearch.training.checkpoint import save_checkpoint
    from clipsearch.training.options import TrainOptions
    from clipsearch.training.prepare import prepare_model

    tiny = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    lm = prepare_model(arch=tiny, opts=TrainOptions(), texts_for_vocab=["a red circle"])
    save_checkpoint(lm.model, tmp_path / "m", lm.model_cfg, lm.preprocess_cfg, {"token_ids": lm.token_ids})

    @click.group()
    def cli():
        pass

    register(cli)
    r = CliRunner().invoke(cli, ["inspect", "--model", str(tmp_path / "m"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    total = sum(p.numel() for p in lm.model.parameters())
    assert d["parameters"]["total"]["total"] == total
    assert d["parameters"]["total"]["frozen"] == 0
    assert d["text"]["vocab_size"] == len(lm.token_ids) + 2
    assert d["vision"]["patch_size"] == 8 and d["embed_dim"] == 16


def test_inspect_cli_errors_are_short_messages(tmp_path):
    from clipsearch.cli import cli

    r = CliRunner().invoke(cli, ["inspect", "--model", str(tmp_path / "nope")])  # no such path: maybe a moved checkpoint
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "does not exist" in r.output and "--model NEWPATH" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["inspect", "--model", "no-such-model"])  # not a path, not a name: a usage error
    assert r.exit_code == 2 and "unknown model" in r.output and "Traceback" not in r.output
    (tmp_path / "empty").mkdir()  # a directory, but no checkpoint in it
    r = CliRunner().invoke(cli, ["inspect", "--model", str(tmp_path / "empty")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "has no open_clip_config.json" in r.output and "Traceback" not in r.output
