"""Fault injection (reliability.md D4-D6): writes, fsyncs, os.replace, opens and SQLite steps fail at the
N-th call for N = 1, 2, ... until a run gets through. After every failure: a clear one-line error
(a ClipSearchError, never a raw traceback), `check` passes, and a rerun completes with every image."""

from __future__ import annotations

import errno
import os
import shutil
import types

import numpy as np
import pytest
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from clipsearch import Library, vector_index
from clipsearch.errors import ClipSearchError, LibraryError
from clipsearch.store import Catalog
from clipsearch.vector_index import VectorIndex

from conftest import make_image
from reliability_helpers import FakeEncoder, ok_paths

FIGURES: dict[str, int] = {}


class Fault:
    """Counts calls of one operation and raises at the N-th (armed) call."""

    def __init__(self, n: int, exc: BaseException):
        self.n, self.exc, self.calls, self.fired = n, exc, 0, False

    def tick(self):
        self.calls += 1
        if self.calls == self.n:
            self.fired = True
            raise self.exc


def patch_os(monkeypatch, name: str, fault: Fault):
    """Fault one os function as the cache writer (clipsearch.vector_index) sees it."""
    real = getattr(os, name)

    def wrapped(*a, **k):
        fault.tick()
        return real(*a, **k)

    proxy = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    setattr(proxy, name, wrapped)
    monkeypatch.setattr(vector_index, "os", proxy)


def patch_sqlite(monkeypatch, fault: Fault):
    """Fault SQLite statement execution and COMMIT, as SQLAlchemy issues them."""
    import sqlite3

    real_exec, real_commit = SQLiteDialect_pysqlite.do_execute, SQLiteDialect_pysqlite.do_commit

    def do_execute(self, cursor, statement, parameters, context=None):
        fault.tick()
        return real_exec(self, cursor, statement, parameters, context)

    def do_commit(self, dbapi_connection):
        fault.tick()
        return real_commit(self, dbapi_connection)

    monkeypatch.setattr(SQLiteDialect_pysqlite, "do_execute", do_execute)
    monkeypatch.setattr(SQLiteDialect_pysqlite, "do_commit", do_commit)
    del sqlite3


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A library with 12 images indexed, and a folder that has changed since: 10 new, 2 deleted, 1 renamed."""
    tmp = tmp_path_factory.mktemp("faults")
    photos = tmp / "photos"
    for i in range(12):
        make_image(photos / f"old{i:02d}.png", i)
    enc = FakeEncoder()
    with Library.open(tmp / "lib", encoder=enc, batch_size=4) as lib:
        lib.index([photos])
    for i in range(10):
        make_image(photos / f"new{i:02d}.png", 100 + i)
    (photos / "old00.png").unlink()
    (photos / "old01.png").unlink()
    (photos / "old02.png").rename(photos / "moved02.png")
    return tmp, photos, enc


def one_round(base, tmp_path, arm) -> bool:
    """Copy the base library, run `index` with a fault armed; True when the run failed."""
    src, photos, enc = base
    lib_dir = tmp_path / "lib"
    if lib_dir.exists():
        shutil.rmtree(lib_dir)
    shutil.copytree(src / "lib", lib_dir)
    cache_before = (lib_dir / "index.faiss").read_bytes()
    failed = False
    with pytest.MonkeyPatch.context() as mp:
        fault = arm(mp)
        try:
            with Library.open(lib_dir, encoder=enc, batch_size=4) as lib:
                lib.index([photos])
        except ClipSearchError as e:
            failed = True
            msg = str(e)
            assert "\n" not in msg and len(msg) < 600, msg
            assert "every committed batch is kept" in msg or "rolled back" in msg, msg
            assert fault.fired
        assert failed == fault.fired, "a fault fired but the run claimed success" if fault.fired else ""
    # the cache file is the previous one byte for byte, or a complete new one that is exactly the database's
    # live vectors at its last commit; no temp file is left
    assert_cache_is_old_or_complete(lib_dir, cache_before)
    assert not list(lib_dir.glob("index.faiss.tmp.*"))
    with Library.open(lib_dir, encoder=enc, batch_size=4) as lib:
        r = lib.check()
        assert r.ok, r.problems
        lib.index([photos])
        assert lib.check().ok
    want = {os.fsencode(p) for p in photos.iterdir()}
    assert ok_paths(lib_dir) == want
    return failed


def assert_cache_is_old_or_complete(lib_dir, cache_before: bytes) -> None:
    index, header = VectorIndex.load(lib_dir / "index.faiss")
    if (lib_dir / "index.faiss").read_bytes() == cache_before:
        return
    catalog = Catalog.open(lib_dir / "library.db")
    try:
        assert header.watermark_seq == catalog.seq, (header.watermark_seq, catalog.seq)
        assert header.library_uuid == catalog.get_meta("library_uuid")
        db_ids, db_vecs = catalog.live_vectors(index.dim)
    finally:
        catalog.close()
    ids = index.ids()
    order = np.argsort(ids, kind="stable")
    assert np.array_equal(ids[order], db_ids) and np.array_equal(index.vectors()[order], db_vecs)


def nth_call_loop(base, tmp_path, make_arm, limit=400, step=lambda n: 1):
    n, failures = 1, 0
    while n <= limit:
        if not one_round(base, tmp_path, make_arm(n)):
            return failures, n
        failures += 1
        n += step(n)
    raise AssertionError(f"still failing at call {limit}")


@pytest.mark.parametrize("op,err", [
    ("write", errno.ENOSPC), ("fsync", errno.EIO), ("replace", errno.EXDEV), ("open", errno.EMFILE),
    ("close", errno.EIO),
])
def test_cache_file_faults_at_every_call(base, tmp_path, op, err):
    def make_arm(n):
        def arm(mp):
            f = Fault(n, OSError(err, os.strerror(err)))
            patch_os(mp, op, f)
            return f
        return arm

    failures, n = nth_call_loop(base, tmp_path, make_arm)
    FIGURES[f"os.{op}"] = failures
    assert failures >= 1


def test_sqlite_step_faults_at_every_call(base, tmp_path):
    import sqlite3

    def make_arm(n):
        def arm(mp):
            f = Fault(n, sqlite3.OperationalError("database or disk is full" if n % 2 else "disk I/O error"))
            patch_sqlite(mp, f)
            return f
        return arm

    # every call: the loop ends at the first N past the run's last SQLite step
    failures, n = nth_call_loop(base, tmp_path, make_arm, limit=2000)
    FIGURES["sqlite steps"] = failures
    print(f"\nfault injection: {FIGURES}; the SQLite loop passed the last statement at call {n}")
    assert failures > 50


def test_enospc_while_writing_the_cache_keeps_the_previous_one(base, tmp_path):
    src, photos, enc = base
    lib_dir = tmp_path / "lib"
    shutil.copytree(src / "lib", lib_dir)
    before = (lib_dir / "index.faiss").read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        f = Fault(2, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))  # the second chunk: a half-written temp
        patch_os(mp, "write", f)
        with Library.open(lib_dir, encoder=enc, batch_size=4) as lib:
            with pytest.raises(LibraryError, match="disk full"):
                lib.index([photos])
    assert (lib_dir / "index.faiss").read_bytes() == before  # byte-identical
    VectorIndex.load(lib_dir / "index.faiss")
    assert not list(lib_dir.glob("index.faiss.tmp.*"))
    # the database kept the batches: the rerun embeds nothing new
    with Library.open(lib_dir, encoder=enc, batch_size=4) as lib:
        assert lib.check().ok
        calls = enc.calls
        report = lib.index([photos])
        assert enc.calls == calls and report.embedded == 0


def test_fsync_failure_is_raised_not_swallowed(tmp_path, monkeypatch):
    """faiss.write_index returned normally on /dev/full: our writer must raise a late (fsync/close) failure."""
    index = VectorIndex(4)
    from clipsearch.vector_index import CacheHeader

    header = CacheHeader(library_uuid="u", model_fingerprint="m", dim=4, watermark_seq=0, ntotal=0)
    for op in ("fsync", "close"):
        f = Fault(1, OSError(errno.ENOSPC, "No space left on device"))
        with pytest.MonkeyPatch.context() as mp:
            patch_os(mp, op, f)
            with pytest.raises(OSError):
                index.save(tmp_path / "index.faiss", header)
        assert not (tmp_path / "index.faiss").exists()
        assert not list(tmp_path.glob("index.faiss.tmp.*"))


def test_disk_full_at_commit_via_cli_is_one_clear_line(base, tmp_path):
    """End to end through the CLI in-process: the message says what failed and what to do, exit 1."""
    import sqlite3

    from click.testing import CliRunner

    from clipsearch.cli import cli

    src, photos, enc = base
    lib_dir = tmp_path / "lib"
    shutil.copytree(src / "lib", lib_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("clipsearch.library.Library.encoder", property(lambda self: enc))
        f = Fault(40, sqlite3.OperationalError("database or disk is full"))
        patch_sqlite(mp, f)
        res = CliRunner().invoke(cli, ["index", str(photos), "--library", str(lib_dir), "-q"])
    assert res.exit_code == 1, res.output
    assert "disk full" in res.output and "Traceback" not in res.output
