"""`clipsearch check` and `check --repair`: what they find, and that repair never rewrites the database."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np
import pytest

from clipsearch import Library
from clipsearch.vector_index import VectorIndex

from conftest import make_image, run_cli
from reliability_helpers import FakeEncoder


@pytest.fixture
def built(tmp_path):
    root = tmp_path / "photos"
    for i in range(12):
        make_image(root / f"p{i:02d}.png", i)
    enc = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=enc, batch_size=4) as lib:
        lib.index([root])
    return tmp_path / "lib", root, enc


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def db_content(db) -> list[str]:
    """The database as SQL (schema and every row), without the durability marker's row."""
    con = sqlite3.connect(db)
    try:
        lines = list(con.iterdump())
    finally:
        con.close()
    return [line for line in lines if "'durable_at'" not in line]


def test_clean_library_passes(built):
    lib_dir, _, enc = built
    with Library.open(lib_dir, encoder=enc) as lib:
        r = lib.check()
    assert r.ok and r.files == 12 and r.vectors == 12 and r.cache == "ok" and r.cache_ntotal == 12, r.to_dict()


def test_cli_check_json_and_exit_codes(built):
    lib_dir, _, _ = built
    res = run_cli("check", "--library", str(lib_dir), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ok"] is True

    # a damaged cache: exit 1 and the problem listed; --repair rebuilds it; the database is untouched
    cache = lib_dir / "index.faiss"
    data = bytearray(cache.read_bytes())
    data[-3] ^= 0xFF
    cache.write_bytes(bytes(data))
    res = run_cli("check", "--library", str(lib_dir))
    assert res.returncode == 1 and "checksum mismatch" in res.stdout and "--repair" in res.stderr
    db_before = db_content(lib_dir / "library.db")
    assert sum(line.startswith('INSERT INTO "files"') for line in db_before) == 12
    res = run_cli("check", "--library", str(lib_dir), "--repair", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["repaired"] and out["ok"] and out["cache_ntotal"] == 12
    rows = sqlite3.connect(lib_dir / "library.db").execute(
        "SELECT count(*) FROM embeddings WHERE live=1").fetchone()
    assert rows == (12,)
    VectorIndex.load(cache)  # a good cache again
    assert (lib_dir / "index.faiss.corrupt").exists()
    assert run_cli("check", "--library", str(lib_dir)).returncode == 0
    # only the durability marker (meta.durable_at, written before a cache is published) may have changed in the
    # database: every other row of every table is identical
    assert db_content(lib_dir / "library.db") == db_before


@pytest.mark.parametrize("damage", ["nan", "zero", "dim", "dangling", "live-flag"])
def test_bad_vectors_are_listed(built, damage):
    lib_dir, _, enc = built
    con = sqlite3.connect(lib_dir / "library.db")
    eid = con.execute("SELECT embedding_id FROM files WHERE status='ok' ORDER BY id LIMIT 1").fetchone()[0]
    if damage == "nan":
        con.execute("UPDATE embeddings SET vector=? WHERE id=?", (np.full(16, np.nan, "<f4").tobytes(), eid))
    elif damage == "zero":
        con.execute("UPDATE embeddings SET vector=? WHERE id=?", (np.zeros(16, "<f4").tobytes(), eid))
    elif damage == "dim":
        con.execute("UPDATE embeddings SET vector=? WHERE id=?", (np.ones(8, "<f4").tobytes(), eid))
    elif damage == "dangling":
        con.execute("PRAGMA foreign_keys=OFF")
        con.execute("UPDATE files SET embedding_id=NULL WHERE embedding_id=?", (eid,))
    else:
        con.execute("UPDATE embeddings SET live=0 WHERE id=?", (eid,))
    con.commit()
    con.close()
    with Library.open(lib_dir, encoder=enc) as lib:
        r = lib.check()
        assert not r.ok and r.problems, damage
        # --repair does not touch the database: the problem stays and is reported
        r2 = lib.check(repair=True)
        assert not r2.ok and any("restore library.db" in n for n in r2.notes)


def test_cache_ahead_of_database_or_from_another_library(built, tmp_path):
    lib_dir, root, enc = built
    with Library.open(lib_dir, encoder=enc) as lib:
        index, header = VectorIndex.load(lib.index_path)
        index.watermark = lib.catalog.seq + 5
        index.save(lib.index_path, header)
        r = lib.check()
        assert not r.ok and any("ahead of the database" in p for p in r.problems)
        assert lib.check(repair=True).ok
        assert lib.check().ok
    other = tmp_path / "other"
    with Library.open(other, encoder=enc) as lib2:
        lib2.index([root])
    (lib_dir / "index.faiss").write_bytes((other / "index.faiss").read_bytes())
    with Library.open(lib_dir, encoder=enc) as lib:
        r = lib.check()
        assert not r.ok and any("another library" in p for p in r.problems)


def test_damaged_database_is_reported_not_repaired(built):
    lib_dir, _, enc = built
    db = lib_dir / "library.db"
    con = sqlite3.connect(db)
    root_page = con.execute("SELECT rootpage FROM sqlite_master WHERE name='files'").fetchone()[0]
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    assert not (lib_dir / "library.db-wal").exists() or (lib_dir / "library.db-wal").stat().st_size == 0
    data = bytearray(db.read_bytes())
    start = (root_page - 1) * page
    for i in range(start + 8, start + 300):  # scribble over the files table's b-tree page
        data[i] ^= 0x5A
    db.write_bytes(bytes(data))
    before = _sha(db)
    res = run_cli("check", "--library", str(lib_dir), "--repair")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and ("database" in res.stdout + res.stderr), res.stdout + res.stderr
    assert _sha(db) == before
