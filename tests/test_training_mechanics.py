"""clipsearch train: loss goes down, checkpoints round-trip, freezing and projection surgery."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


from clipsearch.training import shapes  # noqa: E402
from clipsearch.training.train import (  # noqa: E402
    MAX_LOGIT_SCALE, TrainOptions, apply_freezing, build_model, count_parameters, load_model, match_matrix,
    prepare_model, scene_codes, train_folder,
)
from clipsearch.training.vocab import remap_tokens  # noqa: E402

TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapes")
    shapes.write_dataset(d, 40, seed=11)
    return d


def _embed(lm, images, texts):
    from clipsearch.training.evaluate import LocalEncoder

    enc = LocalEncoder.__new__(LocalEncoder)
    enc.lm, enc.name, enc.dim, enc._torch = lm, "x", lm.model_cfg["embed_dim"], torch
    lm.model.eval()
    return enc.embed_images(images), enc.embed_texts(texts)


def test_train_lowers_loss_and_roundtrips(shapes_folder, tmp_path):
    out = tmp_path / "ckpt"
    opts = TrainOptions(epochs=12, batch_size=16, lr=2e-3, warmup_steps=2, seed=0, val_fraction=0.1, augment="none", num_threads=2)
    s = train_folder(shapes_folder, out, arch=TINY, opts=opts)
    first = np.mean(s["losses"][:2])
    last = np.mean(s["losses"][-2:])
    assert last < first - 0.2, (first, last)
    assert len(s["history"]) == 12 and all("val_recall@1" in h for h in s["history"])
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert set(cfg) >= {"model_cfg", "preprocess_cfg", "clipsearch"}
    assert cfg["preprocess_cfg"]["size"] == 32
    ids = cfg["clipsearch"]["token_ids"]
    assert cfg["model_cfg"]["text_cfg"]["vocab_size"] == len(ids) + 2 and ids[-2:] == [49406, 49407]
    assert (out / "open_clip_model.safetensors").is_file()

    # reload: identical embeddings to the trained model in memory
    from PIL import Image

    ims = [Image.open(p).convert("RGB") for p in sorted((shapes_folder / "images").iterdir())[:4]]
    texts = ["a red circle", "a large blue square at the top"]
    again = load_model(str(out))
    a_img, a_txt = _embed(again, ims, texts)
    b = load_model(str(out))
    b_img, b_txt = _embed(b, ims, texts)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_txt, b_txt)
    assert a_img.shape == (4, 24)


def test_training_is_reproducible(shapes_folder, tmp_path):
    opts = TrainOptions(epochs=2, batch_size=16, lr=1e-3, warmup_steps=1, seed=5, val_fraction=0.0, num_threads=2)
    s1 = train_folder(shapes_folder, tmp_path / "a", arch=TINY, opts=opts)
    s2 = train_folder(shapes_folder, tmp_path / "b", arch=TINY, opts=opts)
    assert s1["losses"] == s2["losses"]
    assert (tmp_path / "a" / "open_clip_model.safetensors").read_bytes() == (tmp_path / "b" / "open_clip_model.safetensors").read_bytes()


def test_finetune_from_checkpoint_with_new_projection(shapes_folder, tmp_path):
    base = tmp_path / "base"
    train_folder(shapes_folder, base, arch=TINY, opts=TrainOptions(epochs=1, batch_size=16, val_fraction=0.0))
    out = tmp_path / "ft"
    opts = TrainOptions(epochs=1, batch_size=16, lr=1e-4, val_fraction=0.0, new_projection=8, unfreeze_vision_blocks=1,
                        unfreeze_text_blocks=0, freeze_logit_scale=True)
    s = train_folder(shapes_folder, out, model=str(base), opts=opts)
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["embed_dim"] == 8
    lm = load_model(str(out))
    assert lm.model.visual.proj.shape == (32, 8) and lm.model.text_projection.shape == (32, 8)
    from PIL import Image

    img, txt = _embed(lm, [Image.new("RGB", (64, 64), (200, 30, 30))], ["a red circle"])
    assert img.shape == (1, 8) and txt.shape == (1, 8)
    # frozen logit scale did not move
    assert float(lm.model.logit_scale) == pytest.approx(float(load_model(str(base)).model.logit_scale))
    assert s["parameters"]["other"]["frozen"] == 1


def _block_params(block):
    return sum(p.numel() for p in block.parameters())


def test_freezing_counts():
    model = build_model(TINY)
    apply_freezing(model, unfreeze_vision_blocks=1, unfreeze_text_blocks=2, freeze_logit_scale=True)
    c = count_parameters(model)
    v = model.visual
    expect_v = _block_params(v.transformer.resblocks[-1]) + v.ln_post.weight.numel() + v.ln_post.bias.numel() + v.proj.numel()
    expect_t = (sum(_block_params(b) for b in model.transformer.resblocks[-2:]) + model.ln_final.weight.numel()
                + model.ln_final.bias.numel() + model.text_projection.numel())
    assert c["vision"]["trainable"] == expect_v
    assert c["text"]["trainable"] == expect_t
    assert c["other"] == {"trainable": 0, "frozen": 1, "total": 1}
    assert c["total"]["trainable"] == expect_v + expect_t
    assert c["total"]["total"] == sum(p.numel() for p in model.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "visual.conv1.weight" not in trainable and "token_embedding.weight" not in trainable
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in trainable
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" not in trainable
    assert "transformer.resblocks.0.attn.in_proj_weight" not in trainable
    assert "transformer.resblocks.1.attn.in_proj_weight" in trainable

    apply_freezing(model, -1, -1, False)
    assert count_parameters(model)["total"]["frozen"] == 0
    apply_freezing(model, 0, 0, False)
    c0 = count_parameters(model)
    assert c0["vision"]["trainable"] == v.ln_post.weight.numel() * 2 + v.proj.numel()


def test_prepare_model_new_projection_and_scale():
    lm = prepare_model(arch=TINY, opts=TrainOptions(new_projection=12), texts_for_vocab=["a red circle"])
    assert lm.model_cfg["embed_dim"] == 12
    x = lm.model.encode_text(lm.tokenize(["a red circle"]), normalize=True)
    assert x.shape == (1, 12)
    assert float(lm.model.logit_scale.exp()) == pytest.approx(1 / 0.07, rel=1e-5)
    assert MAX_LOGIT_SCALE == pytest.approx(np.log(100))


def test_remap_tokens():
    ids = [320, 736, 7117, 49406, 49407]
    t = torch.tensor([[49406, 320, 736, 99, 7117, 49407, 0, 0]])
    assert remap_tokens(t, ids).tolist() == [[5, 2, 3, 1, 4, 6, 0, 0]]
    # EOT keeps the largest id (open_clip pools at argmax)
    assert int(remap_tokens(t, ids).argmax()) == 5


def test_match_matrix_multi_positive():
    sc = [
        {"objects": [{"size": "small", "color": "red", "shape": "circle", "cell": [0, 0]}]},
        {"objects": [{"size": "large", "color": "red", "shape": "circle", "cell": [1, 1]},
                     {"size": "small", "color": "blue", "shape": "star", "cell": [2, 2]}]},
    ]
    codes = np.stack([scene_codes(s) for s in sc])
    nobj = np.array([1, 2])
    any_ = -1
    red_circle = [[any_, 0, 0, any_], [-9] * 4]
    star_full = [list(codes[1][1]), [-9] * 4]          # complete caption of one object
    both = [list(codes[1][1]), list(codes[1][0])]        # full caption of image 1, swapped order
    cons = np.array([red_circle, star_full, both])
    m = match_matrix(codes, nobj, cons, np.array([False, True, True]))
    assert m.tolist() == [[True, False, False], [True, False, True]]


def test_image_pair_loss_and_time_budget(shapes_folder, tmp_path):
    # far more epochs than 3 seconds allow on any machine, so the time budget is what stops it
    opts = TrainOptions(epochs=100_000, batch_size=16, lr=1e-3, warmup_steps=1, val_fraction=0.0, image_pair_weight=0.5,
                        caption_probs={"p_full": 0.2}, max_minutes=0.05)
    s = train_folder(shapes_folder, tmp_path / "c", arch=TINY, opts=opts)
    assert all(np.isfinite(s["losses"]))
    assert s["stopped_early"] and s["steps"] < 100_000
    assert (tmp_path / "c" / "open_clip_model.safetensors").is_file()


TINY_RESNET = {  # the demo model's kind of image tower (open_clip's ModifiedResNet), tiny
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def test_resnet_tower_trains_freezes_and_serves(shapes_folder, tmp_path):
    """Training, block freezing (BatchNorm statistics of frozen blocks stay put), a new projection, and the
    checkpoint used by `clipsearch index/query --model DIR`, for a ResNet image tower."""
    from click.testing import CliRunner

    from clipsearch.cli import cli

    base = tmp_path / "base"
    s = train_folder(shapes_folder, base, arch=TINY_RESNET,
                     opts=TrainOptions(epochs=6, batch_size=16, lr=2e-3, warmup_steps=2, val_fraction=0.0, num_threads=2))
    assert np.mean(s["losses"][-2:]) < np.mean(s["losses"][:2])

    lm = load_model(str(base))
    apply_freezing(lm.model, unfreeze_vision_blocks=1, unfreeze_text_blocks=0)
    v = lm.model.visual
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("visual.")} == {
        n for n, _ in lm.model.named_parameters() if n.startswith(("visual.layer4.", "visual.attnpool."))}
    c = count_parameters(lm.model)
    assert c["vision"]["trainable"] == _block_params(v.layer4) + _block_params(v.attnpool)

    out = tmp_path / "ft"
    frozen_stats = load_model(str(base)).model.visual.layer1[0].bn1.running_mean.clone()
    opts = TrainOptions(epochs=2, batch_size=16, lr=1e-3, val_fraction=0.2, new_projection=8, unfreeze_vision_blocks=1,
                        unfreeze_text_blocks=0, num_threads=2)
    train_folder(shapes_folder, out, model=str(base), opts=opts)
    ft = load_model(str(out))
    assert ft.model.visual.attnpool.c_proj.out_features == 8
    assert torch.equal(ft.model.visual.layer1[0].bn1.running_mean, frozen_stats)  # frozen block: statistics kept
    assert not torch.equal(ft.model.visual.layer4[0].bn1.running_mean,
                           load_model(str(base)).model.visual.layer4[0].bn1.running_mean)  # trained block: updated

    lib = tmp_path / "lib"
    r = CliRunner().invoke(cli, ["index", str(shapes_folder / "images"), "--library", str(lib), "--model", str(out), "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["query", "a red circle", "--library", str(lib), "--json", "-k", "3"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)) == 3
    r = CliRunner().invoke(cli, ["status", "--library", str(lib), "--json"])
    assert json.loads(r.output)["dim"] == 8
