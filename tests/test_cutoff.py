"""cutoff="auto" on the shapes demo model: a rendered library from which every image holding some (colour,
shape) pairs was removed answers [] for those pairs and keeps the present pairs' relevant results, at the
rates benchmarks/cutoff.py measures on larger libraries; plus the standing arithmetic it judges by."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipsearch import Library, cutoff
from clipsearch.query import Filters, Query
from clipsearch.training import shapes

N_RENDERED = 640
SEED = 4242
N_ABSENT = 12  # 11 of 12 answered [] is 91.7%: the 90% target with one miss allowed
ALL_PAIRS = [(c, s) for c in shapes.COLORS for s in shapes.SHAPES]


def pairs_in(scene: dict) -> set[tuple[str, str]]:
    return {(o["color"], o["shape"]) for o in scene["objects"]}


@pytest.fixture(scope="module")
def holdout(tmp_path_factory):
    root = tmp_path_factory.mktemp("cutoff")
    order = np.random.default_rng(SEED).permutation(len(ALL_PAIRS))
    absent = {ALL_PAIRS[i] for i in order[:N_ABSENT]}
    images = root / "photos"
    images.mkdir()
    scenes = {}
    for i in range(N_RENDERED):
        scene, data = shapes.make_item(SEED, i)
        if pairs_in(scene) & absent:
            continue
        (images / scene["file"]).write_bytes(data)
        scenes[scene["file"]] = scene
    lib = Library.open(root / "lib", model="shapes")
    lib.index([images])
    yield lib, scenes, absent
    lib.close()


def test_absent_pairs_answer_nothing_and_present_pairs_keep_their_relevant_results(holdout):
    lib, scenes, absent = holdout
    assert 350 < len(scenes) < 520  # about a third of the rendered images held an absent pair
    empty, kept, relevant = 0, 0, 0
    for pair in ALL_PAIRS:
        text = f"a {pair[0]} {pair[1]}"
        plain = lib.search(Query.text(text, k=10, cutoff="none"))
        auto = lib.search(Query.text(text, k=10, cutoff="auto"))
        assert len(plain) == 10
        assert [r.path for r in auto] == [r.path for r in plain[:len(auto)]]  # a cut, never a reordering
        assert all(r.gap >= r.min_gap - 1e-6 for r in auto)
        if len(auto) < 10:
            assert plain[len(auto)].gap < cutoff.min_gap(cutoff.model_logit_scale("shapes"))
        if pair in absent:
            empty += not auto
        else:
            rel = [r.path for r in plain if pair in pairs_in(scenes[r.path.rsplit("/", 1)[1]])]
            relevant += len(rel)
            kept += len(set(rel) & {r.path for r in auto})
    assert empty / len(absent) >= 0.90, f"{empty}/{len(absent)} absent pairs answered []"
    assert kept / relevant >= 0.95, f"{kept}/{relevant} relevant results kept"


def test_auto_and_filters_together(holdout):
    lib, scenes, absent = holdout
    f = Filters(path_glob="*/shape_00[0-3]*")  # the first 400 rendered
    for pair in sorted(absent)[:3]:
        assert lib.search(Query.text(f"a {pair[0]} {pair[1]}", k=10, cutoff="auto", filters=f)) == []
        assert len(lib.search(Query.text(f"a {pair[0]} {pair[1]}", k=10, cutoff="none", filters=f))) == 10
    present = next(p for p in ALL_PAIRS if p not in absent)
    res = lib.search(Query.text(f"a {present[0]} {present[1]}", k=10, cutoff="auto", filters=f))
    assert res and all(r.path.rsplit("/", 1)[1] < "shape_00400" for r in res)


def test_every_result_carries_its_standing(holdout):
    lib, scenes, absent = holdout
    res = lib.search(Query.text("a yellow star", k=5, cutoff="none"))
    for r in res:
        d = r.to_dict()
        assert {"rank", "score", "path", "id"} <= set(d)  # the old fields keep their names
        assert d["z"] is not None and d["percentile"] is not None and d["gap"] is not None
        assert 90.0 <= d["percentile"] <= 100.0 and d["z"] > 1.5
    assert res[0].min_gap is None  # cutoff="none": nothing was asked of it
    auto = lib.search(Query.text("a yellow star", k=5))  # the default
    assert auto and auto[0].min_gap == pytest.approx(cutoff.min_gap(cutoff.model_logit_scale("shapes")))
    assert [r.path for r in lib.search("a yellow star", k=5)] == [r.path for r in res]  # the plain form: no cut-off


def test_standing_arithmetic():
    scores = np.linspace(-0.2, 0.4, 601)
    st = cutoff.Standing.of(scores)
    assert st.n == 601 and st.floor == pytest.approx(np.quantile(scores, 0.05))
    assert st.mean == pytest.approx(0.1) and st.std == pytest.approx(np.std(scores))
    assert st.percentile(0.1) == pytest.approx(100 * 300 / 601)  # share strictly below
    assert st.percentile(0.5) == 100.0 and st.percentile(-1) == 0.0
    assert st.z(0.1 + st.std) == pytest.approx(1.0)
    assert st.gap(0.3) == pytest.approx(0.3 - st.floor)
    assert st.judgeable and not cutoff.Standing.of(scores[:cutoff.MIN_JUDGE - 1]).judgeable
    assert cutoff.min_gap(50.0) == pytest.approx(cutoff.GAP_LOGITS / 50.0)
    assert cutoff.min_gap(None) == cutoff.min_gap(float("nan")) == pytest.approx(cutoff.GAP_LOGITS / 100.0)


def test_logit_scale_is_read_from_the_checkpoint(tiny_model):
    from safetensors.numpy import load_file

    from clipsearch.encoders import builtin_model_dir

    stored = load_file(str(builtin_model_dir("shapes") / "open_clip_model.safetensors"))["logit_scale"]
    assert cutoff.model_logit_scale("shapes") == pytest.approx(math.exp(float(stored)))
    assert cutoff.model_logit_scale(tiny_model) == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's initial value
    assert cutoff.model_logit_scale("no-such-model") is None and cutoff.model_logit_scale(None) is None


def test_a_tiny_library_is_not_judged(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(cutoff.MIN_JUDGE - 5):
        scene, data = shapes.make_item(7, i)
        (images / scene["file"]).write_bytes(data)
    with Library.open(tmp_path / "lib", model="shapes") as lib:
        lib.index([images])
        res = lib.search(Query.text("a purple cross", k=10, cutoff="auto"))
    assert len(res) == 10 and all(r.min_gap is None for r in res)
