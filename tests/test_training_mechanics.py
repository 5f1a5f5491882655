"""clipsearch train: loss goes down, checkpoints round-trip, freezing and projection surgery, the time budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipsearch.training import shapes
from clipsearch.training.captions import match_matrix, scene_codes
from clipsearch.training.checkpoint import save_checkpoint
from clipsearch.training.data import Dataset, load_folder_images, read_captioned_folder, texts_universe
from clipsearch.training.loop import image_pair_loss, train
from clipsearch.training.models import MAX_LOGIT_SCALE, build_model, load_model
from clipsearch.training.options import TrainOptions
from clipsearch.training.prepare import apply_freezing, count_parameters, prepare_model
from clipsearch.training.train import train_folder
from clipsearch.training.vocab import remap_tokens

TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}


TINY_RESNET = {  # the demo model's kind of image tower (open_clip's ModifiedResNet), tiny
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
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


def _prepared(folder, arch, opts):
    """(LoadedModel, Dataset) as train_folder makes them, for tests that drive the parts themselves."""
    items = read_captioned_folder(folder)
    pre = Dataset(None, [it.caption for it in items], [it.scene for it in items])
    lm = prepare_model(arch=arch, opts=opts, texts_for_vocab=texts_universe(pre))
    return lm, Dataset(load_folder_images(folder, items, lm.preprocess_cfg), pre.captions, pre.scenes)


def test_train_lowers_loss_and_writes_its_config(shapes_folder, tmp_path):
    out = tmp_path / "ckpt"
    opts = TrainOptions(epochs=12, batch_size=16, lr=2e-3, warmup_steps=2, seed=0, val_fraction=0.1, augment="none")
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
    assert cfg["clipsearch"]["summary"]["torch_threads"] == torch.get_num_threads()
    assert (out / "open_clip_model.safetensors").is_file()


@pytest.mark.parametrize("arch", [TINY, TINY_RESNET], ids=["vit", "resnet"])
def test_checkpoint_round_trip_keeps_the_trained_model(shapes_folder, tmp_path, arch):
    """The model loaded back from a checkpoint equals the trained model in memory: every tensor of the
    state dict (BatchNorm statistics too) and the embeddings of an image and a text."""
    from PIL import Image

    opts = TrainOptions(epochs=1, batch_size=16, lr=2e-3, warmup_steps=1, seed=4, val_fraction=0.0)
    lm, ds = _prepared(shapes_folder, arch, opts)
    train(lm, ds, opts)  # weights (and a ResNet's running statistics) move away from their initial values
    before = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    image = Image.open(sorted((shapes_folder / "images").iterdir())[0]).convert("RGB")
    texts = ["a large blue square at the top"]
    want_img, want_txt = _embed(lm, [image], texts)

    save_checkpoint(lm.model, tmp_path / "ckpt", lm.model_cfg, lm.preprocess_cfg, {"token_ids": lm.token_ids})
    back = load_model(str(tmp_path / "ckpt"))
    after = back.model.state_dict()
    assert sorted(after) == sorted(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    got_img, got_txt = _embed(back, [image], texts)
    assert want_img.shape == (1, arch["embed_dim"])
    np.testing.assert_array_equal(got_img, want_img)
    np.testing.assert_array_equal(got_txt, want_txt)

    # float16 weights: each float tensor is the in-memory one rounded to float16, nothing else
    save_checkpoint(lm.model, tmp_path / "half", lm.model_cfg, lm.preprocess_cfg, {"token_ids": lm.token_ids}, fp16=True)
    half = load_model(str(tmp_path / "half")).model.state_dict()
    for k, v in before.items():
        assert torch.equal(half[k], v.half().float() if v.is_floating_point() else v), k


def test_time_budget_follows_the_clock(shapes_folder):
    """With --max-minutes the cosine decay follows the clock and the run stops when the budget is spent.
    The clock is a fake that advances one second per step, so the stopping step is exact."""
    opts = TrainOptions(epochs=1000, batch_size=16, lr=1e-3, warmup_steps=1, val_fraction=0.0, image_pair_weight=0.5,
                        caption_probs={"p_full": 0.2}, max_minutes=3 / 60)
    lm, ds = _prepared(shapes_folder, TINY, opts)
    now = [100.0]
    lrs = []

    def tick(e):
        if e["event"] == "step":
            lrs.append(e["lr"])
            now[0] += 1.0

    s = train(lm, ds, opts, tick, clock=lambda: now[0])
    assert s["stopped_early"] and s["steps"] == 4 and s["epochs"] == 2  # 4 s > 3 s after the 4th step (2 a epoch)
    # warm-up step, then cosine at 1/3, 2/3 and all of the budget (by steps it would be ~0 of 2000)
    assert lrs == pytest.approx([1e-3, 0.75e-3, 0.25e-3, 0.0], abs=1e-12)
    assert s["seconds"] == 4.0
    assert all(np.isfinite(s["losses"]))


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
    assert float(lm.model.logit_scale.detach()) == pytest.approx(float(load_model(str(base)).model.logit_scale.detach()))
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
    assert float(lm.model.logit_scale.detach().exp()) == pytest.approx(1 / 0.07, rel=1e-5)


def test_training_clamps_the_logit_scale_at_100(shapes_folder):
    opts = TrainOptions(epochs=0.5, batch_size=16, lr=1e-3, warmup_steps=1, val_fraction=0.0)  # one step
    lm, ds = _prepared(shapes_folder, TINY, opts)
    with torch.no_grad():
        lm.model.logit_scale.fill_(6.0)  # scale e^6 = 403, above the ceiling
    s = train(lm, ds, opts)
    assert s["steps"] == 1
    assert float(lm.model.logit_scale.detach()) == pytest.approx(np.log(100)) == MAX_LOGIT_SCALE


def test_image_pair_loss_counts_images_sharing_a_color_and_shape():
    red_circle = [0, 0, 0, 0]
    blue_star = [0, 1, 3, 4]
    none = [-9] * 4
    codes = np.array([[red_circle, none], [red_circle, blue_star], [blue_star[:2] + [4, 8], none]])
    img_f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # images 0 and 1 are each other's only positive (image 2 shares no pair): per row -log(e / (e + 1))
    got = image_pair_loss(img_f, torch.tensor(1.0), codes)
    assert float(got) == pytest.approx(np.log1p(np.exp(-1.0)), rel=1e-6)
    assert float(image_pair_loss(img_f, torch.tensor(1.0), codes[[0, 2]])) == 0.0  # no positives at all


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


def test_resnet_tower_trains_freezes_and_serves(shapes_folder, tmp_path):
    """Training, block freezing (BatchNorm statistics of frozen blocks stay put), a new projection, and the
    checkpoint used by `clipsearch index/query --model DIR`, for a ResNet image tower."""
    from click.testing import CliRunner

    from clipsearch.cli import cli

    base = tmp_path / "base"
    s = train_folder(shapes_folder, base, arch=TINY_RESNET,
                     opts=TrainOptions(epochs=6, batch_size=16, lr=2e-3, warmup_steps=2, val_fraction=0.0, ))
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
                        unfreeze_text_blocks=0, )
    train_folder(shapes_folder, out, model=str(base), opts=opts)
    ft = load_model(str(out))
    assert ft.model.visual.attnpool.c_proj.out_features == 8
    assert torch.equal(ft.model.visual.layer1[0].bn1.running_mean, frozen_stats)  # frozen block: statistics kept
    assert not torch.equal(ft.model.visual.layer4[0].bn1.running_mean,
                           load_model(str(base)).model.visual.layer4[0].bn1.running_mean)  # trained block: updated

    lib = tmp_path / "lib"
    r = CliRunner().invoke(cli, ["index", str(shapes_folder / "images"), "--library", str(lib), "--model", str(out), "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["query", "a red circle", "--library", str(lib), "--json", "-k", "3", "--cutoff", "none"])  # serving, not the cut-off
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)) == 3
    r = CliRunner().invoke(cli, ["status", "--library", str(lib), "--json"])
    assert json.loads(r.output)["dim"] == 8
