#!/usr/bin/env python
"""Train clipsearch's offline demo model ("shapes") from scratch.

    python scripts/train_demo_model.py            # writes clipsearch/models/shapes/

Renders a training set of the shapes domain with a fixed seed (in memory, already resized to the
model's input size), trains a small CLIP from scratch on 2 CPU threads, and writes the checkpoint
directory (open_clip_config.json + float16 open_clip_model.safetensors). Deterministic for a given
seed and thread count. Never uses ../shared/shapes-sample (the evaluation set).

Options: --n images, --epochs, --seed, --out DIR, --max-minutes (stop early, still saves),
--batch-size, --lr, --workers (render processes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A small ModifiedResNet image tower (open_clip's ResNet with an attention-pool head; 1,364,760 parameters):
# at 96 px its last feature map is 3 x 3, one cell per grid position of the domain. Against the ViT of the
# first demo model (96 px, patch 8, width 96, 4 layers) a training step takes 0.49 s instead of 0.82 s on
# 2 CPU threads, and a 10-minute run of it scored better on shapes-sample (partial-description P@10 0.89,
# example-image P@10 0.91) than that ViT after 67 minutes (0.71, 0.49); docs/training.md has the figures.
ARCH = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 96, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
CAPTION_PROBS = {"p_full": 0.35, "p_swap": 0.3, "p_size": 0.3, "p_color": 0.5, "p_position": 0.5, "p_no_shape": 0.05}
TRAIN_SEED = 20260101  # rendering seed of the training set (sample_images/ uses another)


def _render_chunk(args):
    import io

    import numpy as np
    from PIL import Image

    from clipsearch.training import shapes
    from clipsearch.training.data import pil_transform

    seed, start, stop, pp = args
    tf = pil_transform(pp)
    scenes, arrs = [], []
    for i in range(start, stop):
        scene, data = shapes.make_item(seed, i)
        with Image.open(io.BytesIO(data)) as im:
            arrs.append(np.asarray(tf(im.convert("RGB")), dtype=np.uint8))
        scenes.append(scene)
    return scenes, np.stack(arrs)


def render_training_set(n: int, seed: int, pp: dict, workers: int = 2):
    import numpy as np
    import torch

    chunk = 500
    jobs = [(seed, s, min(n, s + chunk), pp) for s in range(0, n, chunk)]
    scenes, arrs = [], []
    with Pool(workers) as pool:
        for sc, ar in pool.imap(_render_chunk, jobs):
            scenes.extend(sc)
            arrs.append(ar)
    images = torch.from_numpy(np.concatenate(arrs)).permute(0, 3, 1, 2).contiguous()
    return images, scenes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "clipsearch" / "models" / "shapes"))
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--epochs", type=float, default=18)
    ap.add_argument("--seed", type=int, default=0, help="training seed (init, shuffling, augmentation)")
    ap.add_argument("--data-seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--image-pair-weight", type=float, default=0.2, help="extra image-image loss (see clipsearch/training/loop.py)")
    ap.add_argument("--caption-probs", default=None, help='JSON of ShapesCaptionSampler arguments, e.g. {"p_full": 0.3}')
    ap.add_argument("--cache", default=None, help="keep the rendered training set in this folder and reuse it")
    ap.add_argument("--init", default=None, help="continue from this checkpoint instead of starting from scratch")
    ap.add_argument("--arch", default=None, help="JSON of an open_clip model config to use instead of the built-in one")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    import logging

    import torch
    from tqdm import tqdm

    from clipsearch.training.checkpoint import checkpoint_info, save_checkpoint
    from clipsearch.training.data import Dataset, texts_universe
    from clipsearch.training.loop import train
    from clipsearch.training.models import RandomInitNotice
    from clipsearch.training.options import TrainOptions
    from clipsearch.training.prepare import count_parameters, prepare_model

    # process-wide settings belong to the script, not to the library
    torch.set_num_threads(a.threads)
    logging.getLogger().addFilter(RandomInitNotice())  # a new model has no weights, on purpose
    t_start = time.time()
    opts = TrainOptions(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=0.1, warmup_steps=a.warmup,
                        seed=a.seed, val_fraction=0.03, val_max=1000, fp16_weights=True,
                        max_minutes=a.max_minutes, image_pair_weight=a.image_pair_weight,
                        caption_probs=json.loads(a.caption_probs) if a.caption_probs else CAPTION_PROBS)
    if a.init:
        lm = prepare_model(model=a.init, opts=opts)
    else:
        lm = prepare_model(arch=json.loads(a.arch) if a.arch else ARCH, opts=opts, texts_for_vocab=texts_universe(Dataset(None, [], [])))
    print(f"model: {json.dumps(lm.model_cfg)}", file=sys.stderr)
    print(f"parameters: {count_parameters(lm.model)['total']['total']:,}", file=sys.stderr)
    t0 = time.time()
    cache = Path(a.cache) / f"shapes-n{a.n}-seed{a.data_seed}-size{lm.preprocess_cfg['size']}.pt" if a.cache else None
    if cache is not None and cache.is_file():
        images, scenes = torch.load(cache, weights_only=False)
    else:
        images, scenes = render_training_set(a.n, a.data_seed, lm.preprocess_cfg, a.workers)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save((images, scenes), cache)
    render_s = time.time() - t0
    print(f"rendered {a.n} images in {render_s:.0f} s", file=sys.stderr)
    ds = Dataset(images, [s["caption"] for s in scenes], scenes)

    bar = None
    out = Path(a.out)

    def cb(e):
        nonlocal bar
        if e["event"] == "start":
            bar = tqdm(total=e["total_steps"], desc="train", file=sys.stderr, dynamic_ncols=True)
        elif e["event"] == "step":
            bar.update(1)
            bar.set_postfix(loss=f"{e['loss']:.3f}", scale=f"{e['logit_scale']:.1f}")
        elif e["event"] == "epoch":
            tqdm.write(f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}  val recall@1 {e.get('val_recall@1', float('nan')):.3f}  ({e['seconds']:.0f} s)", file=sys.stderr)
            info = checkpoint_info(lm, opts, {"partial": True, "epoch": e["epoch"]}, f"shapes renderer, seed {a.data_seed}, n={a.n}")
            save_checkpoint(lm.model, out, lm.model_cfg, lm.preprocess_cfg, info, fp16=True)

    summary = train(lm, ds, opts, cb)
    if bar is not None:
        bar.close()
    total_s = time.time() - t_start
    summary["render_seconds"] = round(render_s, 1)
    summary["total_seconds"] = round(total_s, 1)
    info = checkpoint_info(lm, opts, summary, f"shapes renderer (clipsearch.training.shapes), seed {a.data_seed}, n={a.n}")
    info["trained_by"] = "scripts/train_demo_model.py"
    save_checkpoint(lm.model, out, lm.model_cfg, lm.preprocess_cfg, info, fp16=True)
    size = (out / "open_clip_model.safetensors").stat().st_size
    print(json.dumps({"out": str(out), "weights_bytes": size, "total_seconds": round(total_s, 1),
                      "train_seconds": summary["seconds"], "render_seconds": round(render_s, 1),
                      "history": summary["history"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
