"""Indexing throughput and peak memory: a naive baseline against clipsearch's indexer, side by side.

    python benchmarks/index_throughput.py            # 12 MP and ~1 MP corpora, ViT-B-32 (random weights)
    python benchmarks/index_throughput.py --n12 16 --n1 64   # a quicker run

(a) naive: Pillow decodes every JPEG in full, open_clip's preprocessing resizes it, the fp32 model
    embeds it alone (batch 1), one image after another.
(b) clipsearch: the real `Library.index` (a fresh library): read + hash + JPEG draft decode +
    preprocess in worker threads overlapping batched inference in the CPU's best precision, one
    SQLite commit per batch, the FAISS cache written at the end.

(c) the workers' share: CPU milliseconds per picture to read, hash, draft-decode and preprocess, on
    one thread (what the indexer's threads take from the cores the model also needs).

Each run is a fresh process, so its peak RSS is its own. Times exclude loading the model (both).
The corpora are camera-like JPEGs (smooth shapes and gradients, fine texture and sensor-like
noise, quality 90, 4:2:0), each different, generated once into --work and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's clipsearch, installed or not
from _common import ARCH, DEFAULT_WORK, machine, peak_rss_mb, run_child, versions, vit_b32_weights  # noqa: E402

CORPORA = {"12mp": (4000, 3000), "1mp": (1152, 864)}


def camera_like(seed: int, size: tuple[int, int]):
    """A detailed photo-like picture: gradients, shapes, texture and noise (JPEG sizes like a camera's)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    w, h = size
    sw, sh = max(64, w // 4), max(48, h // 4)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    base = np.empty((sh, sw, 3), np.float32)
    for c in range(3):
        a, b, k = rng.uniform(-1, 1, 3)
        base[..., c] = 128 + 60 * np.sin(a * xx / sw * 6 + b * yy / sh * 6 + k * 3)
    im = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, sw)), int(rng.integers(0, sh))
        x1, y1 = x0 + int(rng.integers(4, sw // 3)), y0 + int(rng.integers(4, sh // 3))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        [draw.ellipse, draw.rectangle][int(rng.integers(0, 2))]((x0, y0, x1, y1), fill=fill)
    im = im.filter(ImageFilter.GaussianBlur(1)).resize((w, h), Image.BICUBIC)
    px = np.asarray(im, dtype=np.int16)
    yy, xx = np.mgrid[0:h, 0:w]
    texture = (6 * np.sin(xx * 0.9 + yy * 0.35) * np.sin(yy * 0.7)).astype(np.int16)[..., None]
    noise = rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16)
    return Image.fromarray((px + texture + noise).clip(0, 255).astype(np.uint8), "RGB")


def make_corpus(work: Path, name: str, n: int) -> Path:
    d = work / f"corpus-{name}-{n}"
    done = d / ".complete"
    if done.exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = d / f"img_{i:05d}.jpg"
        if not p.exists():
            camera_like(1000 * (1 + list(CORPORA).index(name)) + i, CORPORA[name]).save(p, "JPEG", quality=90)
    done.write_text("ok")
    return d


# -- the two contenders, each run in its own process ---------------------------------------------------------
def child_naive(corpus: Path, weights: Path) -> dict:
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    model = open_clip.create_model(ARCH, pretrained=None)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    pp = open_clip.transform.PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    preprocess = open_clip.transform.image_transform_v2(pp, is_train=False)
    files = sorted(corpus.glob("*.jpg"))
    start = time.perf_counter()
    with torch.no_grad():
        for f in files:
            img = Image.open(f).convert("RGB")  # full decode
            v = model.encode_image(preprocess(img).unsqueeze(0))
            v = torch.nn.functional.normalize(v, dim=-1).numpy()
    secs = time.perf_counter() - start
    return {"images": len(files), "seconds": secs, "peak_rss_mb": peak_rss_mb()}


def child_clipsearch(corpus: Path, weights: Path, lib: Path, options: dict) -> dict:
    import shutil

    from clipsearch import Library

    shutil.rmtree(lib, ignore_errors=True)
    with Library.open(lib, model=f"{ARCH}:{weights}", create=True, **options) as library:
        report = library.index([corpus])
        precision = getattr(library.encoder, "precision", "?")
    if report.skipped:
        raise SystemExit(f"skipped: {report.skipped[:3]}")
    return {"images": report.embedded, "seconds": report.seconds, "peak_rss_mb": peak_rss_mb(), "precision": precision}


def prepare_cpu_ms(files: list[Path]) -> float:
    """CPU milliseconds per picture of the indexer workers' part, on one thread: read, hash, JPEG draft
    decode, preprocess (the indexer's own functions; the ViT-B-32 preprocessing config)."""
    from clipsearch import imaging
    from clipsearch.encoders.openclip import pil_preprocess

    preprocess = pil_preprocess({"size": 224, "interpolation": "bicubic", "resize_mode": "shortest"})
    start = time.process_time()
    for f in files:
        data = f.read_bytes()
        imaging.content_hash(data)
        preprocess(imaging.decode(data, draft=224)[0])
    return (time.process_time() - start) * 1000 / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n12", type=int, default=32, help="12-megapixel images (default 32)")
    ap.add_argument("--n1", type=int, default=192, help="~1-megapixel images (default 192)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="corpora, weights and libraries go here")
    ap.add_argument("--skip-naive", action="store_true", help="only clipsearch's indexer")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kind, corpus, weights = args.child[:3]
        if kind == "naive":
            out = child_naive(Path(corpus), Path(weights))
        else:
            out = child_clipsearch(Path(corpus), Path(weights), Path(args.child[3]), json.loads(args.child[4]))
        print(json.dumps(out))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    t = time.perf_counter()
    weights = vit_b32_weights(args.work)
    corpora = {}
    for name, n in (("12mp", args.n12), ("1mp", args.n1)):
        if n > 0:
            corpora[name] = make_corpus(args.work, name, n)
    print(f"model: {ARCH} (random weights, {weights.stat().st_size / 1e6:.0f} MB safetensors); corpora ready in "
          f"{time.perf_counter() - t:.0f}s")
    options = {k: v for k, v in (("batch_size", args.batch_size), ("workers", args.workers),
                                 ("precision", args.precision)) if v is not None}
    print(f"clipsearch options: {options or 'defaults'}\n")
    header = f"{'corpus':<34} {'method':<34} {'images':>6} {'seconds':>8} {'img/s':>7} {'peak RSS':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    for name, corpus in corpora.items():
        files = sorted(corpus.glob("*.jpg"))
        mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
        from PIL import Image

        with Image.open(files[0]) as im:
            desc = f"{name} {im.width}x{im.height} JPEG q90 ({mb:.1f} MB avg)"
        res = {"prepare_ms": prepare_cpu_ms(files[:32])}
        for method in (["naive"] if not args.skip_naive else []) + ["clipsearch"]:
            child = [__file__, "--child", method, str(corpus), str(weights)]
            if method == "clipsearch":
                child += [str(args.work / f"lib-{name}"), json.dumps(options)]
            r = run_child(child)
            res[method] = r
            label = ("naive: full decode, fp32, batch 1" if method == "naive"
                     else f"clipsearch Library.index ({r.get('precision')})")
            print(f"{desc:<34} {label:<34} {r['images']:>6} {r['seconds']:>8.1f} "
                  f"{r['images'] / r['seconds']:>7.2f} {r['peak_rss_mb']:>6.0f} MB", flush=True)
        rows.append((name, res))
    print()
    for name, res in rows:
        c = res["clipsearch"]
        line = f"{name}: clipsearch {c['images'] / c['seconds']:.2f} img/s"
        if "naive" in res:
            n = res["naive"]
            line += (f" vs naive {n['images'] / n['seconds']:.2f} img/s = x{(c['images'] / c['seconds']) / (n['images'] / n['seconds']):.2f}"
                     f"; peak RSS {c['peak_rss_mb']:.0f} MB vs {n['peak_rss_mb']:.0f} MB")
        print(line)
        print(f"  read + hash + draft decode + preprocess, one thread: {res['prepare_ms']:.1f} ms of CPU a picture")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
