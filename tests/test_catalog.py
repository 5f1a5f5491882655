"""The Catalog through its public methods only, so that the same tests run against any backend.

`catalog` is parametrised by backend; SQLite runs everywhere. A PostgreSQL backend (a later issue) adds
its name to BACKENDS and a way to make a fresh database in `_fresh_location`; nothing below changes.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from clipsearch.store import Catalog, Record

BACKENDS = ["sqlite"]


def _fresh_location(backend: str, tmp_path):
    if backend == "sqlite":
        return tmp_path / "library.db"
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
def catalog(request, tmp_path):
    cat = Catalog.open(_fresh_location(request.param, tmp_path))
    yield cat
    cat.close()


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def rec(path: bytes, h: str | None, vector=None, error=None, size=1) -> Record:
    return Record(path=path, size=size, mtime_ns=1, ino=1, content_hash=h, vector=vector, error=error)


def test_a_new_catalog_has_its_identity_and_meta_round_trips(catalog):
    meta = catalog.all_meta()
    assert len(meta["library_uuid"]) == 32 and meta["seq"] == "0"
    catalog.set_meta(model="m", dim="8")
    catalog.set_meta(model="m2")  # an upsert, not a second row
    assert catalog.get_meta("model") == "m2" and catalog.get_meta("dim") == "8" and catalog.get_meta("nope") is None


def test_batches_roots_lookups_and_sweeps(catalog):
    root = catalog.add_root(b"/photos")
    assert catalog.add_root(b"/photos") == root
    scan = catalog.new_scan()
    seq1 = catalog.commit_batch([rec(b"/photos/a.jpg", "ha", unit(1)), rec(b"/photos/b.jpg", "hb", unit(2)),
                                 rec(b"/photos/copy-of-a.jpg", "ha"),  # same content: reuses a's vector
                                 rec(b"/photos/bad.jpg", None, error="not an image")], root_id=root, scan=scan)
    assert seq1 == catalog.seq == 1
    rows = catalog.lookup([b"/photos/a.jpg", b"/photos/bad.jpg", b"/photos/none.jpg"])
    assert set(rows) == {b"/photos/a.jpg", b"/photos/bad.jpg"}
    assert rows[b"/photos/bad.jpg"].status == "failed" and rows[b"/photos/bad.jpg"].error == "not an image"
    assert catalog.counts() == {"ok": 3, "failed": 1, "deleted": 0, "vectors": 2}
    assert catalog.failures() == [(b"/photos/bad.jpg", "not an image")]
    ids, vecs = catalog.live_vectors(8)
    assert len(ids) == 2 and np.allclose(vecs[0], unit(1)) and np.allclose(vecs[1], unit(2))
    ea = catalog.embedding_by_hash("ha")[0]
    assert catalog.has_embedding("ha") and not catalog.has_embedding("zz")
    assert catalog.files_for_embeddings([ea]) == {ea: [b"/photos/a.jpg", b"/photos/copy-of-a.jpg"]}
    assert catalog.file_embedding_id(b"/photos/copy-of-a.jpg") == ea
    vec, paths = catalog.embedding(ea)
    assert np.allclose(vec, unit(1)) and paths == [b"/photos/a.jpg", b"/photos/copy-of-a.jpg"]

    # a second scan sees only b: a, its copy and bad are tombstoned, a's vector is no longer live
    scan2 = catalog.new_scan()
    catalog.mark_seen([catalog.lookup([b"/photos/b.jpg"])[b"/photos/b.jpg"].id], scan2)
    removed, seq2 = catalog.sweep(b"/photos", scan2)
    assert removed == 3 and seq2 == catalog.seq == 2
    dead, add_ids, _ = catalog.changes_since(seq1, 8)
    assert dead.tolist() == [ea] and add_ids.tolist() == []
    assert catalog.embedding(ea) is None and catalog.embedding_by_hash("ha") is None
    assert catalog.counts()["vectors"] == 1
    # a path that only shares the prefix is not inside the root
    assert catalog.has_live_files_under(b"/photos") and not catalog.has_live_files_under(b"/photo")


def test_sweep_leaves_sibling_folders_alone(catalog):
    r1, r2 = catalog.add_root(b"/a/b"), catalog.add_root(b"/a/bc")
    scan = catalog.new_scan()
    catalog.commit_batch([rec(b"/a/b/x.jpg", "h1", unit(1))], root_id=r1, scan=scan)
    catalog.commit_batch([rec(b"/a/bc/y.jpg", "h2", unit(2))], root_id=r2, scan=scan)
    removed, _ = catalog.sweep(b"/a/b", catalog.new_scan())
    assert removed == 1
    assert catalog.lookup([b"/a/bc/y.jpg"])[b"/a/bc/y.jpg"].status == "ok"


def test_reads_from_many_threads_at_once(catalog):
    root = catalog.add_root(b"/p")
    scan = catalog.new_scan()
    catalog.commit_batch([rec(b"/p/%d.jpg" % i, f"h{i}", unit(i)) for i in range(50)], root_id=root, scan=scan)
    errors, barrier = [], threading.Barrier(8)

    def read(n: int) -> None:
        try:
            barrier.wait()
            for i in range(30):
                h = f"h{(n * 7 + i) % 50}"
                assert catalog.has_embedding(h)
                eid = catalog.embedding_by_hash(h)[0]
                assert catalog.files_for_embeddings([eid])[eid] == [os.fsencode(f"/p/{h[1:]}.jpg")]
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_integrity_check_says_ok(catalog):
    assert catalog.integrity_check() == ["ok"]
