"""The shapes renderer: captions agree with scenes, determinism, fidelity to the spec's sample."""

from __future__ import annotations

import csv
import json

import numpy as np

from clipsearch.training import shapes

from conftest import require_shapes_sample


def test_captions_match_scenes(tmp_path):
    scenes = shapes.write_dataset(tmp_path, 40, seed=3)
    rows = list(csv.DictReader(open(tmp_path / "captions.csv", encoding="utf-8")))
    lines = [json.loads(line) for line in open(tmp_path / "scenes.jsonl", encoding="utf-8")]
    assert [r["file"] for r in rows] == [s["file"] for s in lines] == [s["file"] for s in scenes]
    for row, scene in zip(rows, lines):
        assert (tmp_path / "images" / row["file"]).is_file()
        assert row["caption"] == scene["caption"] == shapes.caption_for(scene)
        objs = scene["objects"]
        assert 1 <= len(objs) <= 2
        assert len({tuple(o["cell"]) for o in objs}) == len(objs)
        assert len({(o["color"], o["shape"]) for o in objs}) == len(objs)
        for o in objs:
            lo, hi = shapes.SMALL_R if o["size"] == "small" else shapes.LARGE_R
            assert lo <= o["r"] <= hi
            assert abs(o["dx"]) <= 6 and abs(o["dy"]) <= 6
            assert all(abs(j) <= 15 for j in o["jitter"])
            assert shapes.describe(o) in row["caption"]


def test_caption_text_examples():
    one = {"objects": [{"size": "small", "color": "pink", "shape": "circle", "cell": [0, 1]}]}
    assert shapes.caption_for(one) == "a small pink circle at the top"
    two = {"objects": [
        {"size": "large", "color": "blue", "shape": "circle", "cell": [2, 2]},
        {"size": "small", "color": "blue", "shape": "cross", "cell": [2, 0]},
    ]}
    assert shapes.caption_for(two) == "a small blue cross in the bottom left and a large blue circle in the bottom right"


def test_deterministic_and_format_mix():
    a = [shapes.make_item(7, i) for i in range(20)]
    b = [shapes.make_item(7, i) for i in range(20)]
    assert a == b
    assert {s["file"][-3:] for s, _ in a} == {"png", "jpg"}
    assert shapes.make_item(8, 0) != a[0]


def test_distribution_roughly_as_spec():
    rng = np.random.default_rng(0)
    scenes = [shapes.random_scene(rng) for _ in range(2000)]
    one = np.mean([len(s["objects"]) == 1 for s in scenes])
    assert 0.56 < one < 0.64
    colors = {o["color"] for s in scenes for o in s["objects"]}
    assert colors == set(shapes.COLORS)
    assert {o["shape"] for s in scenes for o in s["objects"]} == set(shapes.SHAPES)


def test_noise_level():
    scene = {"background": "light gray", "objects": []}
    arr = shapes.render_array(scene, np.random.default_rng(0)).astype(float)
    assert abs(arr.mean() - 200) < 0.5
    assert 3.5 < arr.std() < 4.5


def test_faithful_to_independent_sample():
    """Re-rendering the sample's scenes gives the sample's images up to noise (and JPEG)."""
    from PIL import Image

    SAMPLE = require_shapes_sample()

    scenes = [json.loads(line) for line in open(SAMPLE / "scenes.jsonl", encoding="utf-8")][:30]
    for s in scenes:
        assert shapes.caption_for(s) == s["caption"]
        theirs = np.asarray(Image.open(SAMPLE / "images" / s["file"]).convert("RGB"), dtype=float)
        ours = shapes.render_array(s, np.random.default_rng(1)).astype(float)
        diff = np.abs(theirs - ours)
        assert diff.mean() < 6.0          # two independent noise fields: ~4.5
        assert (diff > 60).mean() < 0.002  # no misplaced or miscoloured shape
