"""Text-query latency in the process that just indexed, against a freshly opened library.

Before the read path (reader.py), a Library that had indexed answered text queries with the full torch
model it had loaded for the images, while a freshly opened one used the numpy text tower: a query's
speed and its scores depended on what the process had done before. Now both use the same tower. This
prints the three, side by side in one run: after index, freshly opened, and the old after-index path
(the full torch text tower) for comparison.

    python benchmarks/search_after_index.py [--model shapes] [--n 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_WORK, machine, versions, vit_b32_weights  # noqa: E402

TEXTS = ["a red circle", "two blue squares on the left", "a photo of a dog", "sunset over the sea"]


def timed(lib, n: int = 24) -> tuple[float, float]:
    xs = []
    for i in range(n):
        t = time.perf_counter()
        lib.search(TEXTS[i % len(TEXTS)], k=10)
        xs.append((time.perf_counter() - t) * 1000)
    xs = sorted(xs[4:])
    return statistics.median(xs), xs[int(0.95 * (len(xs) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: ViT-B-32 with random weights")
    ap.add_argument("--n", type=int, default=64, help="images to index")
    args = ap.parse_args()
    from PIL import Image
    import numpy as np

    from clipsearch import Library

    model = args.model or f"ViT-B-32:{vit_b32_weights(DEFAULT_WORK)}"
    print(f"machine: {machine()}\nversions: {versions()}\nmodel: {model}, {args.n} images\n")
    with tempfile.TemporaryDirectory() as d:
        photos = Path(d) / "photos"
        photos.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((320, 240)).save(photos / f"{i}.jpg")
        lib = Library.open(Path(d) / "lib", model=model)
        lib.index([photos])
        after = timed(lib)
        lib.close()
        fresh_lib = Library.open(Path(d) / "lib")
        fresh = timed(fresh_lib)
        _ = fresh_lib.encoder  # the image tower loaded, as after an index run
        fresh_lib.reader._text_encoder = False  # the old after-index path: texts through the full torch model
        old = timed(fresh_lib)
        fresh_lib.close()
    print(f"{'Library.search, text query':<52} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"{'  in the process that just indexed':<52} {after[0]:>8.1f} {after[1]:>8.1f}")
    print(f"{'  in a freshly opened library':<52} {fresh[0]:>8.1f} {fresh[1]:>8.1f}")
    print(f"{'  old after-index path (full torch text tower)':<52} {old[0]:>8.1f} {old[1]:>8.1f}")


if __name__ == "__main__":
    main()
