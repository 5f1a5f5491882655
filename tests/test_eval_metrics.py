"""clipsearch eval: figures match rankings computed by hand on a tiny example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.training import evaluate as ev
from clipsearch.training import shapes

SCENES = [
    {"objects": [{"size": "small", "color": "red", "shape": "circle", "cell": [0, 0]}]},
    {"objects": [{"size": "large", "color": "red", "shape": "circle", "cell": [1, 1]},
                 {"size": "small", "color": "blue", "shape": "star", "cell": [2, 2]}]},
    {"objects": [{"size": "large", "color": "blue", "shape": "star", "cell": [0, 1]}]},
    {"objects": [{"size": "small", "color": "green", "shape": "square", "cell": [2, 0]}]},
]
CAPTIONS = [shapes.caption_for(s) for s in SCENES]
IMG = np.array([[1, 0, 0, 0], [0.8, 0.6, 0, 0], [0, 0, 0.6, 0.8], [0, 0, 1, 0]], dtype=np.float32)
# caption embeddings, chosen so that captions 1 and 3 find their image first and 0 and 2 second
CAP = np.array([[0.6, 0.8, 0, 0], [0.8, 0.6, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]], dtype=np.float32)


def test_caption_texts():
    assert CAPTIONS[1] == "a large red circle in the center and a small blue star in the bottom right"


def test_full_caption_recall_by_hand():
    sim = CAP @ IMG.T
    # c0 -> image 1 (.96), image 0 (.6): 2nd; c1 -> image 1 first (1.0);
    # c2 -> image 3 (1.0), image 2 (.6): 2nd; c3 -> image 3 first (1.0)
    hits = np.eye(4, dtype=bool)
    r = ev.recall_at_k(sim, hits, ks=(1, 2, 5))
    assert r == {"recall@1": 0.5, "recall@2": 1.0, "recall@5": 1.0}


def test_precision_normalised_and_raw():
    sim = np.linspace(1, 0, 12)[None, :]
    rel = np.zeros((1, 12), dtype=bool)
    rel[0, [0, 5, 11]] = True
    p = ev.precision_at_k(sim, rel, k=10)
    assert p["precision@10"] == pytest.approx(2 / 3)
    assert p["precision@10_raw"] == pytest.approx(0.2)
    assert p["raw_ceiling"] == pytest.approx(0.3)
    # a query with nothing relevant is skipped
    p2 = ev.precision_at_k(np.vstack([sim, sim]), np.vstack([rel, np.zeros_like(rel)]), k=10)
    assert p2["n_queries"] == 1 and p2["precision@10"] == pytest.approx(2 / 3)


def test_example_image_by_hand():
    rel = ev.example_relevance(SCENES)
    assert rel.astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]]
    eye = np.eye(4, dtype=bool)
    # image-image sims without self: q0 -> 1 (.8) relevant; q1 -> 0 (.8) relevant;
    # q2 -> 3 (.6) NOT relevant; q3 has no relevant image (skipped)
    p = ev.precision_at_k(IMG @ IMG.T, rel, k=1, exclude=eye)
    assert p["n_queries"] == 3
    assert p["precision@1"] == pytest.approx(2 / 3)


def test_partial_queries_and_relevance():
    qs = ev.partial_queries(SCENES)
    texts = {q[1]: q for q in qs}
    for t in ("a circle", "a red circle", "a small red circle", "a circle in the top left",
              "a red circle in the top left", "a star at the top", "a large blue star"):
        assert t in texts, t
    assert "a red circle" in texts and len([q for q in qs if q[1] == "a red circle"]) == 1
    sel = [texts[t] for t in ("a red circle", "a star at the top", "a star", "a small star", "a green square on the left")
           if t in texts]
    rel = ev.partial_relevance(SCENES, sel)
    assert rel.astype(int).tolist() == [[1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0]]
    # "a small star" and the misplaced square were never generated (no such object)
    assert "a small star" not in texts


def test_evaluate_embeddings_end_to_end():
    def embed_texts(texts):
        out = []
        for t in texts:
            if "circle" in t:
                v = IMG[0]
            elif "star" in t:
                v = IMG[2]
            else:
                v = IMG[3]
            out.append(v)
        return np.array(out, dtype=np.float32)

    res = ev.evaluate_embeddings(IMG, CAP, CAPTIONS, SCENES, embed_texts=embed_texts)
    assert res["full_caption"]["recall@1"] == 0.5 and res["full_caption"]["recall@5"] == 1.0
    assert res["n_images"] == 4
    # 4 images: every relevant image is within the first 10
    assert res["partial"]["precision@10"] == 1.0
    assert res["example_image"]["precision@10"] == 1.0
    assert res["example_image"]["n_queries"] == 3
    assert set(res["partial"]["by_kind"]) == set(ev.PARTIAL_KINDS)


def test_quality_tests_fail_under_ci_without_the_shapes_sample(tmp_path, monkeypatch):
    """The quality tests' lookup (conftest.require_shapes_sample): skip on a laptop, fail under CI."""
    from conftest import SHAPES_SAMPLE, require_shapes_sample

    assert SHAPES_SAMPLE.parent.parent == Path(__file__).resolve().parent.parent.parent  # beside the checkout
    monkeypatch.setenv("CLIPSEARCH_SHAPES_SAMPLE", str(tmp_path / "missing"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="missing"):
        require_shapes_sample()
    for ci in ("true", "1"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception, match="CI must run the quality tests"):
            require_shapes_sample()
    (tmp_path / "missing" / "images").mkdir(parents=True)
    (tmp_path / "missing" / "scenes.jsonl").write_text("{}\n")
    assert require_shapes_sample() == tmp_path / "missing"
