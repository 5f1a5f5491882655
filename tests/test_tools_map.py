"""clipsearch map: a projection that separates clearly different groups, a self-contained HTML file, a PNG."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from clipsearch import Library
from clipsearch.errors import ConfigError
from clipsearch.tools.map import project
from clipsearch.training import shapes

from conftest import run_cli


def _scene(color: str, shape: str, cell, rng) -> dict:
    return {"background": "white", "objects": [{
        "shape": shape, "color": color, "size": "large", "cell": list(cell), "r": float(rng.uniform(30, 40)),
        "dx": 0.0, "dy": 0.0, "jitter": [0, 0, 0]}]}


@pytest.fixture(scope="module")
def red_blue(tmp_path_factory):
    """Ten red circles and ten blue squares (places and sizes vary), in two folders."""
    base = tmp_path_factory.mktemp("map")
    rng = np.random.default_rng(5)
    for color in ("red", "blue"):
        (base / "photos" / color).mkdir(parents=True)
        for i in range(10):
            scene = _scene(color, "circle" if color == "red" else "square", (i % 3, (i // 3) % 3), rng)
            arr = shapes.render_array(scene, rng)
            (base / "photos" / color / f"{i}.png").write_bytes(shapes.encode(arr, "png"))
    lib_dir = base / "lib"
    with Library.open(lib_dir, model="shapes") as lib:
        lib.index([base / "photos"])
    return base, lib_dir


def _separation(points, groups) -> float:
    """Distance between the two groups' centroids over their mean within-group RMS radius."""
    xy = np.array(points)
    g = np.array(groups)
    a, b = sorted(set(groups))
    ca, cb = xy[g == a].mean(0), xy[g == b].mean(0)
    spread = np.mean([np.sqrt(((xy[g == k] - c) ** 2).sum(1).mean()) for k, c in ((a, ca), (b, cb))])
    return float(np.linalg.norm(ca - cb) / spread)


def test_map_separates_red_from_blue_and_places_queries(red_blue):
    base, lib_dir = red_blue
    out = base / "out"
    out.mkdir()
    res = run_cli("map", "--library", str(lib_dir), "--out", str(out / "m.json"), "--out", str(out / "m.png"),
                  "--out", str(out / "m.html"), "--method", "pca", "--query", "a red circle", "--query", "a blue square",
                  check=True)
    assert "wrote" in res.stderr
    data = json.loads((out / "m.json").read_text())
    assert data["method"] == "pca" and len(data["points"]) == 20
    groups = [p["group"].rsplit("/", 1)[1] for p in data["points"]]
    xy = [(p["x"], p["y"]) for p in data["points"]]
    assert sorted(set(groups)) == ["blue", "red"]
    assert _separation(xy, groups) > 2.0
    g = np.array(groups)
    centroid = {k: np.array(xy)[g == k].mean(0) for k in ("red", "blue")}
    q = {x["text"]: np.array([x["x"], x["y"]]) for x in data["queries"]}
    assert np.linalg.norm(q["a red circle"] - centroid["red"]) < np.linalg.norm(q["a red circle"] - centroid["blue"])
    assert np.linalg.norm(q["a blue square"] - centroid["blue"]) < np.linalg.norm(q["a blue square"] - centroid["red"])
    # the PNG: a real picture with the thumbnails drawn (the red group's pixels are there)
    from PIL import Image

    png = Image.open(out / "m.png").convert("RGB")
    assert png.size == (1600, 1200)
    a = np.asarray(png).reshape(-1, 3).astype(int)
    reds = ((a[:, 0] > 180) & (a[:, 1] < 80) & (a[:, 2] < 80)).sum()
    blues = ((a[:, 2] > 180) & (a[:, 0] < 60) & (a[:, 1] < 100)).sum()
    assert reds > 300 and blues > 300  # the red circles and blue squares of the thumbnails (frames are other colours)
    # the HTML: self-contained, one inline thumbnail per image, the queries labelled
    doc = (out / "m.html").read_text()
    assert doc.count('href="data:image/jpeg;base64,') == 20
    assert not re.search(r'(src|href)="(https?:)?//', doc) and "<script" not in doc
    assert "a red circle" in doc and "a blue square" in doc


def test_a_shuffled_projection_would_fail_the_statistic(red_blue):
    """The statistic is not vacuous: the same points with the groups shuffled do not separate."""
    base, lib_dir = red_blue
    with Library.open(lib_dir, create=False) as lib:
        index = lib.reader.vector_index()
        coords, _, used = project(index.vectors(), method="pca")
    groups = ["red"] * 10 + ["blue"] * 10
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(groups))
    assert _separation(coords.tolist(), shuffled) < 1.0


def test_projection_errors_and_shapes():
    x = np.random.default_rng(0).standard_normal((10, 8))
    coords, extra, used = project(x, x[:2], method="pca")
    assert coords.shape == (10, 2) and used == "pca" and np.allclose(extra, coords[:2])
    with pytest.raises(ConfigError):
        project(x, method="tsne")


def test_map_refuses_an_unknown_format(red_blue, tmp_path):
    base, lib_dir = red_blue
    res = run_cli("map", "--library", str(lib_dir), "--out", str(tmp_path / "m.gif"))
    assert res.returncode == 2 and ".html, .png or .json" in res.stderr
