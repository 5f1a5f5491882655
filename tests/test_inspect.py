"""clipsearch inspect: architecture description and parameter counts."""

from __future__ import annotations

import json

import pytest


from click.testing import CliRunner  # noqa: E402

from clipsearch.training.inspect import describe, format_description  # noqa: E402


def test_vit_b_32_total_parameters():
    d = describe("ViT-B-32")
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
    from clipsearch.training.train import TrainOptions, apply_freezing, prepare_model, save_checkpoint

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
    r = CliRunner().invoke(cli, ["inspect", "--model", str(tmp_path / "nope")])
    assert r.exit_code != 0
