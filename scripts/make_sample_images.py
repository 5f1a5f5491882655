#!/usr/bin/env python
"""Regenerate sample_images/: 36 images of the shapes domain for the README quick start.

    python scripts/make_sample_images.py

Renders with seed 424242 (the demo model trains on seed 20260101) and keeps the first 30 images
without a red circle plus the first 6 with one, so that `clipsearch query "a red circle"` has
several right answers to show. Writes sample_images/images/, captions.csv and scenes.jsonl.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = 424242
N_RED_CIRCLE = 6
N_OTHER = 30


def main() -> int:
    from clipsearch.training import shapes

    out = ROOT / "sample_images"
    if (out / "images").exists():
        shutil.rmtree(out / "images")
    (out / "images").mkdir(parents=True)
    chosen, red, other = [], 0, 0
    i = 0
    while red < N_RED_CIRCLE or other < N_OTHER:
        scene, data = shapes.make_item(SEED, i, prefix="sample")
        has = any(o["color"] == "red" and o["shape"] == "circle" for o in scene["objects"])
        if has and red < N_RED_CIRCLE:
            red += 1
        elif not has and other < N_OTHER:
            other += 1
        else:
            i += 1
            continue
        (out / "images" / scene["file"]).write_bytes(data)
        chosen.append(scene)
        i += 1
    shapes.write_metadata(out, chosen)
    print(f"wrote {len(chosen)} images ({red} with a red circle) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
