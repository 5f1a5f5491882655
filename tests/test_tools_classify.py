"""classify and tag: zero-shot accuracy on rendered images the demo model never saw, stored vectors for
indexed images, the model's own logit scale, and tags that the catalog selects by."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipsearch import Library
from clipsearch.errors import ConfigError
from clipsearch.query import Filters
from clipsearch.reader import Reader
from clipsearch.tools import classify as C
from clipsearch.training import shapes

from conftest import run_cli

UNSEEN_SEED = 777  # the demo model was trained on seed 20260101
COLOR_SHAPE = [f"a {c} {s}" for c in shapes.COLORS for s in shapes.SHAPES]


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    """40 single-object renders from a seed the model was not trained on, indexed with the demo model."""
    base = tmp_path_factory.mktemp("classify")
    photos = base / "photos"
    photos.mkdir()
    truth = {}
    i = 0
    while len(truth) < 40:
        scene, data = shapes.make_item(UNSEEN_SEED, i)
        i += 1
        if len(scene["objects"]) == 1:
            (photos / scene["file"]).write_bytes(data)
            truth[str(photos / scene["file"])] = scene["objects"][0]
    lib_dir = base / "lib"
    with Library.open(lib_dir, model="shapes") as lib:
        lib.index([photos])
    return lib_dir, photos, truth


def test_classify_unseen_images_by_color_and_shape(unseen):
    lib_dir, photos, truth = unseen
    with Reader.open(lib_dir) as reader:
        found = C.classify(reader, [p for p in truth], COLOR_SHAPE, k=3)
        right = sum(c.labels[0][0] == f"a {truth[c.path]['color']} {truth[c.path]['shape']}" for c in found)
        assert right / len(found) >= 0.9
        assert all(c.id is not None for c in found)  # indexed: stored vectors
        shape_only = C.classify(reader, list(truth), [f"a {s}" for s in shapes.SHAPES], k=1)
        assert np.mean([c.labels[0][0] == f"a {truth[c.path]['shape']}" for c in shape_only]) >= 0.9
        for c in found:
            probs = [p for _, p in c.labels]
            assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9


def test_images_outside_the_library_use_the_image_tower(unseen, tmp_path):
    from PIL import Image

    lib_dir, photos, truth = unseen
    path, obj = next(iter(truth.items()))
    other = tmp_path / "resaved.png"
    Image.open(path).convert("RGB").save(other)  # new content: not in the library
    with Reader.open(lib_dir) as reader:
        (c,) = C.classify(reader, [other], COLOR_SHAPE, k=1)
    assert c.id is None and c.labels[0][0] == f"a {obj['color']} {obj['shape']}"


def test_indexed_images_never_run_the_image_tower(unseen, monkeypatch):
    lib_dir, photos, truth = unseen

    def no_tower(self, path):
        raise AssertionError("the image tower ran for an indexed image")

    monkeypatch.setattr(Reader, "embed_image_file", no_tower)
    with Reader.open(lib_dir) as reader:
        found = C.classify(reader, list(truth)[:5], COLOR_SHAPE, k=1)
        everything = C.classify_library(reader, COLOR_SHAPE, k=1)
    assert len(found) == 5 and len(everything) == len(truth)
    by_path = {paths[0]: top for _, paths, top in everything}
    assert [by_path[c.path][0][0] for c in found] == [c.labels[0][0] for c in found]


def test_softmax_uses_the_models_own_logit_scale(unseen):
    from safetensors import safe_open

    from clipsearch.encoders import builtin_model_dir

    with safe_open(str(builtin_model_dir("shapes") / "open_clip_model.safetensors"), framework="numpy") as f:
        want = float(np.exp(np.float64(f.get_tensor("logit_scale").reshape(-1)[0])))
    assert C.logit_scale("shapes") == pytest.approx(want)
    assert abs(want - C.FALLBACK_LOGIT_SCALE) > 10
    lib_dir, photos, truth = unseen
    path = next(iter(truth))
    labels = ["a red circle", "a blue square", "a green star"]
    with Reader.open(lib_dir) as reader:
        (c,) = C.classify(reader, [path], labels, k=3, templates=["{}"])
        vec, _ = reader.stored_vector(path)
        t = reader.embed_texts(labels)
    logits = want * (t @ vec)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert dict(c.labels) == pytest.approx(dict(zip(labels, p.tolist())), rel=1e-4)


def test_prompt_ensemble_averages_the_templates(unseen):
    lib_dir, photos, truth = unseen
    with Reader.open(lib_dir) as reader:
        m = C.label_matrix(reader.embed_texts, ["a red circle"], ["{}", "{} at the top"])
        a, b = reader.embed_texts(["a red circle", "a red circle at the top"])
    want = (a + b) / np.linalg.norm(a + b)
    assert np.allclose(m[0], want, atol=1e-5)
    assert C.templates_for("shapes") == C.SHAPES_TEMPLATES and C.templates_for("ViT-B-32:x") == C.DEFAULT_TEMPLATES


def test_tag_stores_top_labels_that_the_catalog_selects_by(unseen):
    lib_dir, photos, truth = unseen
    labels = ",".join(f"a {c} shape" for c in shapes.COLORS)
    res = run_cli("tag", "--labels", labels, "--library", str(lib_dir), "--json", check=True)
    counts = json.loads(res.stdout)
    assert sum(counts.values()) == len(truth)
    with Library.open(lib_dir, create=False) as lib:
        ids = lib.catalog.embedding_ids_with_tags(["a red shape", "a blue shape"])
        files = lib.catalog.files_for_embeddings(ids)
        tagged = {p.decode() for ps in files.values() for p in ps}
        want = {p for p, o in truth.items() if o["color"] in ("red", "blue")}
        assert len(tagged ^ want) <= 0.1 * len(truth) and tagged  # zero-shot: >= 90 % right
        assert counts.get("a red shape", 0) + counts.get("a blue shape", 0) == len(ids)
        tags = lib.catalog.tags_of(ids[:1])
        assert tags[ids[0]][0][0] in ("a red shape", "a blue shape") and 0 < tags[ids[0]][0][1] <= 1
        # tagging again replaces: k=2 gives every image two tags
        run_cli("tag", "--labels", labels, "-k", "2", "--library", str(lib_dir), check=True)
        assert sum(lib.catalog.tag_counts().values()) == 2 * len(truth)
    assert Filters(tags=("a red shape",)).active and Filters(tags=("a red shape",)).to_dict() == {"tags": ["a red shape"]}


def test_labels_are_checked():
    assert C.parse_labels("a dog, a cat,a dog") == ["a dog", "a cat"]
    with pytest.raises(ConfigError):
        C.parse_labels("a dog")
    with pytest.raises(ConfigError):
        C.parse_labels(None)


def test_cli_classify_json_and_usage_errors(unseen):
    lib_dir, photos, truth = unseen
    path, obj = next(iter(truth.items()))
    res = run_cli("classify", path, "--labels", ",".join(COLOR_SHAPE), "-k", "2", "--library", str(lib_dir), "--json",
                  check=True)
    (row,) = json.loads(res.stdout)
    assert row["path"] == path and isinstance(row["id"], int) and len(row["labels"]) == 2
    assert row["labels"][0]["label"] == f"a {obj['color']} {obj['shape']}"
    wide = json.loads(run_cli("classify", "--library-wide", "--labels", "a circle,a square", "--library",
                              str(lib_dir), "--json", check=True).stdout)
    assert len(wide) == len(truth)
    both = run_cli("classify", path, "--library-wide", "--labels", "a,b", "--library", str(lib_dir))
    assert both.returncode == 2 and "one of them" in both.stderr
    one = run_cli("classify", path, "--labels", "a dog", "--library", str(lib_dir))
    assert one.returncode != 0 and "at least two labels" in one.stderr and "Traceback" not in one.stderr
