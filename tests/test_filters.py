"""Filters applied before ranking, on a catalog built directly (vectors need no model here): every filter
kind against a brute-force reference, on both of rank()'s paths (score only the candidates / scan and
check), k results whenever k pass, few candidates never scan the index, and the SQL uses indexes."""

from __future__ import annotations

import calendar
import fnmatch
import os
import zlib

import numpy as np
import pytest
import sqlalchemy as sa

from clipsearch import search
from clipsearch.errors import ConfigError
from clipsearch.filters import check_filters, parse_date, parse_exif_datetime, plan_glob
from clipsearch.query import Filters
from clipsearch.search import rank
from clipsearch.store import Catalog, Record, files_table
from clipsearch.store.filtering import filter_conditions
from clipsearch.vector_index import VectorIndex

DIM = 16
FORMATS = ("jpeg", "png", "webp")
DAY = 86_400.0
T0 = calendar.timegm((2020, 1, 1, 0, 0, 0))


def unit_rows(rng, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def file_meta(i: int) -> dict:
    """Deterministic, varied metadata for file i (what the reference predicate reads too)."""
    return dict(
        path=f"/lib/photos/{i % 7}/{'IMG' if i % 3 else 'img'}_{i:05d}.{('jpg', 'png', 'webp')[i % 3]}".encode(),
        mtime_ns=int((T0 + (i % 400) * DAY) * 1e9),
        taken_at=None if i % 5 == 0 else T0 - (i % 300) * DAY,
        format=FORMATS[i % 3],
        width=200 + (i * 37) % 5000, height=150 + (i * 53) % 4000,
    )


def build(tmp_path, n: int, *, special: dict[int, dict] | None = None, copies: dict[int, int] | None = None):
    """A catalog of n files (one vector each) plus `copies` {new file index: file whose content it copies}."""
    rng = np.random.default_rng(n)
    vecs = unit_rows(rng, n)
    cat = Catalog.open(tmp_path / "library.db")
    root = cat.add_root(b"/lib")
    scan = cat.new_scan()
    metas = {}
    recs = []
    for i in range(n):
        m = file_meta(i) | (special or {}).get(i, {})
        metas[i] = m
        recs.append(Record(size=1, ino=i + 1, content_hash=f"h{i}", vector=vecs[i], **m))
    for j, src in (copies or {}).items():
        m = file_meta(j) | (special or {}).get(j, {})
        metas[j] = m
        recs.append(Record(size=1, ino=j + 1, content_hash=f"h{src}", **m))
    for start in range(0, len(recs), 5000):
        cat.commit_batch(recs[start:start + 5000], root_id=root, scan=scan)
    ids, vectors = cat.live_vectors(DIM)
    index = VectorIndex(DIM)
    index.add(ids, vectors)
    emb_of = {}  # file index -> embedding id
    hash_to_id = cat.embedding_ids_for_hashes(f"h{i}" for i in range(n))
    for i in range(n):
        emb_of[i] = hash_to_id[f"h{i}"]
    for j, src in (copies or {}).items():
        emb_of[j] = hash_to_id[f"h{src}"]
    return cat, index, metas, emb_of, dict(zip(ids.tolist(), vectors))


def passes(m: dict, f: Filters) -> bool:
    """The reference: what each filter means, in plain Python."""
    path = m["path"]
    if f.folder is not None and not path.startswith(os.fsencode(f.folder.rstrip("/")) + b"/"):
        return False
    if f.path_glob is not None:
        pat = f.path_glob if f.path_glob.startswith("/") else "*/" + f.path_glob
        if not fnmatch.fnmatchcase(path.decode(), pat):
            return False
    mt = m["mtime_ns"] / 1e9
    if f.modified_after is not None and not mt >= f.modified_after:
        return False
    if f.modified_before is not None and not mt < f.modified_before:
        return False
    t = m["taken_at"]
    if f.taken_after is not None and (t is None or not t >= f.taken_after):
        return False
    if f.taken_before is not None and (t is None or not t < f.taken_before):
        return False
    if f.min_width is not None and not m["width"] >= f.min_width:
        return False
    if f.min_height is not None and not m["height"] >= f.min_height:
        return False
    mp = m["width"] * m["height"] / 1e6
    if f.min_megapixels is not None and not mp >= f.min_megapixels:
        return False
    if f.max_megapixels is not None and not mp <= f.max_megapixels:
        return False
    if f.formats and m["format"] not in f.formats:
        return False
    return True


def reference(q, metas, emb_of, vectors, f: Filters, k: int) -> list[tuple[str, int]]:
    """Brute force: every passing file scored in float64, best first (ties by path), the first k."""
    rows = [(float(np.dot(vectors[emb_of[i]].astype(np.float64), q)), m["path"], emb_of[i])
            for i, m in metas.items() if passes(m, f)]
    rows.sort(key=lambda r: (-r[0], r[1]))
    return [(os.fsdecode(p), e) for _, p, e in rows[:k]]


FILTER_CASES = {
    "folder": Filters(folder="/lib/photos/3"),
    "folder-trailing-slash": Filters(folder="/lib/photos/3/"),
    "glob-absolute": Filters(path_glob="/lib/photos/[12]/IMG_*"),
    "glob-relative": Filters(path_glob="*.png"),
    "glob-question": Filters(path_glob="photos/4/img_0??1?.jpg"),
    "modified": Filters(modified_after=T0 + 30 * DAY, modified_before=T0 + 45 * DAY),
    # bounds past what nanoseconds in 64 bits hold (after 2262, before 1677) bound nothing more than its ends
    "modified-until-2286": Filters(modified_after=T0 + 30 * DAY, modified_before=1e10),
    "modified-since-1653": Filters(modified_after=-1e10, modified_before=T0 + 45 * DAY),
    "taken": Filters(taken_after=T0 - 100 * DAY, taken_before=T0 - 90 * DAY),
    "taken-after-only": Filters(taken_after=T0 - 3 * DAY),
    "width-height": Filters(min_width=4000, min_height=3000),
    "megapixels": Filters(min_megapixels=12.0, max_megapixels=14.0),
    "formats": Filters(formats=("png", "webp")),
    "combined": Filters(folder="/lib/photos/2", formats=("jpeg",), taken_after=T0 - 200 * DAY, min_width=1000),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build(tmp_path_factory.mktemp("filters"), 3000, copies={3000: 11, 3001: 12})


@pytest.mark.parametrize("path", ["subset", "scan"])
@pytest.mark.parametrize("case", sorted(FILTER_CASES))
def test_every_filter_matches_the_brute_force_reference(library, monkeypatch, case, path):
    cat, index, metas, emb_of, vectors = library
    if path == "scan":  # every filter then takes the scan-and-check path
        monkeypatch.setattr(search, "SUBSET_MAX", 0)
    f = FILTER_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    for _ in range(3):
        q = unit_rows(rng, 1)[0]
        for k in (1, 10, 100):
            got = rank(index, cat, q, k, filters=check_filters(f))
            want = reference(q, metas, emb_of, vectors, f, k)
            assert sum(passes(m, f) for m in metas.values()) >= 3, case  # the case really filters something in
            assert [(r.path, r.embedding_id) for r in got] == want, (case, k)
            assert [r.rank for r in got] == list(range(1, len(got) + 1))


def test_a_copy_that_fails_the_filter_is_not_shown_for_the_vector_it_shares(library):
    cat, index, metas, emb_of, vectors = library
    # file 3000 copies file 11's content: same vector, its own path and format
    assert emb_of[3000] == emb_of[11] and metas[3000]["format"] != metas[11]["format"]
    q = vectors[emb_of[11]]
    only = check_filters(Filters(formats=(metas[3000]["format"],)))
    top = rank(index, cat, q, 1, filters=only)[0]
    assert top.path == os.fsdecode(metas[3000]["path"]) and top.format == metas[3000]["format"]


def test_three_of_ten_thousand_come_back_and_only_their_vectors_are_scored(tmp_path, monkeypatch):
    n = 10_000
    special = {i: {"format": "gif"} for i in (17, 4242, 9999)}
    cat, index, metas, emb_of, vectors = build(tmp_path, n, special=special)
    scored = []

    def no_full_scan(*a, **kw):
        raise AssertionError("a filter leaving 3 candidates scanned the whole index")

    real_subset = index.search_subset

    def spy(q, k, ids):
        scored.append(sorted(ids))
        return real_subset(q, k, ids)

    monkeypatch.setattr(index, "search", no_full_scan)
    monkeypatch.setattr(index, "search_subset", spy)
    q = unit_rows(np.random.default_rng(5), 1)[0]
    f = check_filters(Filters(formats=("gif",)))
    for k in (3, 10):
        got = rank(index, cat, q, k, filters=f)
        assert sorted(r.embedding_id for r in got) == sorted(emb_of[i] for i in special)
        assert [r.embedding_id for r in got] == [e for _, e in reference(q, metas, emb_of, vectors, f, k)]
        assert all(r.format == "gif" for r in got)
    assert scored == [sorted(emb_of[i] for i in special)] * 2
    # and k of them when k pass: two of the three
    assert len(rank(index, cat, q, 2, filters=f)) == 2


def test_many_candidates_scan_the_index_and_still_return_k(tmp_path, monkeypatch):
    cat, index, metas, emb_of, vectors = build(tmp_path, 2000)
    f = check_filters(Filters(formats=("jpeg", "png")))  # two thirds pass
    calls = {"search": 0, "subset": 0}
    real_search, real_subset = index.search, index.search_subset

    def s(q, k):
        calls["search"] += 1
        return real_search(q, k)

    def sub(q, k, ids):
        calls["subset"] += 1
        return real_subset(q, k, ids)

    monkeypatch.setattr(index, "search", s)
    monkeypatch.setattr(index, "search_subset", sub)
    q = unit_rows(np.random.default_rng(9), 1)[0]
    got = rank(index, cat, q, 25, filters=f)
    assert len(got) == 25 and calls == {"search": 1, "subset": 0}
    assert [r.embedding_id for r in got] == [e for _, e in reference(q, metas, emb_of, vectors, f, 25)]


def test_filter_sql_is_answered_by_indexes_not_a_table_scan(library):
    cat = library[0]
    expected = {"folder": "sqlite_autoindex_files_1", "glob-absolute": "sqlite_autoindex_files_1",  # path UNIQUE
                "modified": "ix_files_mtime_ns", "taken": "ix_files_taken_at", "megapixels": "ix_files_pixels",
                "formats": "ix_files_format"}
    for name, index in expected.items():
        conds, _ = filter_conditions(check_filters(FILTER_CASES[name]), cat.backend.path_text)
        stmt = sa.select(files_table.c.embedding_id).where(*conds).distinct()
        sql = str(stmt.compile(dialect=sa.dialects.sqlite.dialect(), compile_kwargs={"literal_binds": True}))
        with cat.read() as conn:
            plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        assert f"SEARCH files USING INDEX {index} (" in plan, (name, plan)
        assert "SCAN files" not in plan, (name, plan)


def test_glob_plans_escape_like_and_recheck_exactly():
    g = plan_glob("/a/100%_[xy]*.JPG")
    assert g.prefix == b"/a/100%_" and g.upper == b"/a/100%`"
    assert g.like == "/a/100\\%\\__%.JPG"
    assert g.matches(b"/a/100%_x1.JPG") and not g.matches(b"/a/100%_z1.JPG") and not g.matches(b"/a/100%_x1.jpg")
    assert not g.matches(b"/a/100X_x1.JPG")  # '%' and '_' are literal characters of the glob
    rel = plan_glob("2023/*.png")
    assert rel.prefix == b"" and rel.upper is None and rel.matches(b"/home/me/2023/a.png")
    assert not rel.matches(b"/home/me/x2023/a.png")
    assert plan_glob("/a/[b").matches(b"/a/[b")  # an unclosed bracket is a literal, as in fnmatch


def test_like_special_characters_in_paths_do_not_leak_through(tmp_path):
    cat, index, metas, emb_of, vectors = build(tmp_path, 6, special={
        0: {"path": b"/lib/a%b/x.jpg"}, 1: {"path": b"/lib/aXb/x.jpg"}, 2: {"path": b"/lib/a_b/y.jpg"},
        3: {"path": b"/lib/aZb/y.jpg"}, 4: {"path": b"/lib/A%B/x.jpg"}, 5: {"path": b"/lib/a%b/X.JPG"}})
    q = unit_rows(np.random.default_rng(1), 1)[0]

    def paths(glob):
        return sorted(r.path for r in rank(index, cat, q, 10, filters=check_filters(Filters(path_glob=glob))))

    assert paths("/lib/a%b/*.jpg") == ["/lib/a%b/x.jpg"]  # not aXb (LIKE's %), not A%B or .JPG (case)
    assert paths("/lib/a_b/*") == ["/lib/a_b/y.jpg"]
    assert paths("*/a?b/y.jpg") == ["/lib/aZb/y.jpg", "/lib/a_b/y.jpg"]


def test_subset_search_scores_equal_the_full_scan_and_brute_force():
    rng = np.random.default_rng(3)
    n, dim = 5000, 64
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    ids = rng.choice(10 * n, n, replace=False).astype(np.int64)
    index = VectorIndex(dim)
    index.add(ids, vecs)
    index.remove(ids[:300])  # rows move: the id map must follow
    live = dict(zip(ids[300:].tolist(), vecs[300:]))
    q = rng.standard_normal(dim).astype(np.float32)
    full_scores, full_ids = index.search(q, index.ntotal)
    full = dict(zip(full_ids.tolist(), full_scores.tolist()))
    for size in (1, 3, 50, 1000, 4700):
        chosen = rng.choice(ids[300:], size, replace=False)
        asked = np.concatenate([chosen, ids[:5], [-7, 10 * n + 1]])  # removed and unknown ids are left out
        s, got = index.search_subset(q, size + 10, asked)
        assert sorted(got.tolist()) == sorted(chosen.tolist())
        assert s.tolist() == [full[i] for i in got.tolist()]  # the very same float32 products
        brute = {int(i): float(np.dot(live[int(i)].astype(np.float64), q.astype(np.float64))) for i in chosen}
        np.testing.assert_allclose(s, [brute[i] for i in got.tolist()], rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(s) <= 0)
        top_s, top_i = index.search_subset(q, 3, asked)
        assert top_i.tolist() == got[:3].tolist()


def test_impossible_or_malformed_filters_are_refused_before_searching():
    for bad in (Filters(min_width=-1), Filters(min_width=2.5), Filters(taken_after=10.0, taken_before=5.0),
                Filters(min_megapixels=3, max_megapixels=1), Filters(formats=("jpeg2000",)),
                Filters(modified_after=float("nan")), Filters(path_glob=""), Filters(folder="")):
        with pytest.raises(ConfigError):
            check_filters(bad)
    assert check_filters(Filters(formats=("JPG", ".png", "tif", "jpeg"))).formats == ("jpeg", "png", "tiff")
    assert check_filters(Filters(folder="~/x")).folder == os.path.join(os.path.expanduser("~"), "x")


def test_dates_read_and_written():
    assert parse_exif_datetime("2021:07:04 10:11:12") == calendar.timegm((2021, 7, 4, 10, 11, 12))
    assert parse_exif_datetime(b"2021:07:04 10:11:12\x00") == calendar.timegm((2021, 7, 4, 10, 11, 12))
    for blank in ("0000:00:00 00:00:00", "    :  :     :  :  ", "", None, "2021:13:45 10:11:12", 12):
        assert parse_exif_datetime(blank) is None
    assert parse_date("2021-07-04", wall_clock=True) == calendar.timegm((2021, 7, 4, 0, 0, 0))
    assert parse_date("2021-07-04T10:00+02:00", wall_clock=True) == calendar.timegm((2021, 7, 4, 8, 0, 0))
    with pytest.raises(ConfigError):
        parse_date("last tuesday", wall_clock=False)
