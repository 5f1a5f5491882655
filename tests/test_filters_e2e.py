"""Filters end to end on the shapes demo model: index rendered images (PNG and JPEG, some with EXIF dates),
search through Library.search(Query), and an old library (schema 0002) that gets its dates on the next
index run without a single image embedded again."""

from __future__ import annotations

import calendar
import io
import os
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library
from clipsearch.query import Filters, Query
from clipsearch.store import SCHEMA_HEAD
from clipsearch.training import shapes

N = 60


def write(path, index: int, fmt: str, taken: str | None = None, size: int = 224) -> None:
    scene = shapes.random_scene(shapes.scene_rng(77, index))
    im = Image.fromarray(shapes.render_array(scene, np.random.default_rng(index)), "RGB")
    if size != 224:
        im = im.resize((size, size))
    kw = {}
    if taken:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[36867] = taken
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def taken_of(i: int) -> str | None:
    return None if i % 4 == 0 else f"{2010 + i % 12}:{1 + i % 12:02d}:{1 + i % 28:02d} 12:00:00"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters-e2e") / "photos"
    for i in range(N):
        sub = ("trips", "home", "trips/2019")[i % 3]
        fmt = ("JPEG", "PNG", "WEBP")[i % 5 % 3]
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
        write(root / sub / f"p{i:03d}.{ext}", i, fmt, taken_of(i), size=(224, 320, 160)[i % 7 % 3])
    return root


@pytest.fixture(scope="module")
def library(photos, tmp_path_factory):
    lib = Library.open(tmp_path_factory.mktemp("lib") / "lib", model="shapes")
    lib.index([photos])
    yield lib
    lib.close()


def test_filters_return_only_matching_files_and_still_k_of_them(library, photos):
    lib = library
    everything = lib.search(Query.text("a green triangle", k=N, cutoff="none"))
    assert len(everything) == N
    cases = {
        "png": (Filters(formats=("png",)), lambda r: r.path.endswith(".png")),
        "folder": (Filters(folder=str(photos / "trips")), lambda r: "/trips/" in r.path),
        "folder-nested": (Filters(folder=str(photos / "trips" / "2019")), lambda r: "/trips/2019/" in r.path),
        "glob": (Filters(path_glob="home/p0[0-4]*"), lambda r: "/home/p0" in r.path and r.path.split("/p0")[1][0] in "01234"),
        "big": (Filters(min_width=300, min_height=300), lambda r: r.width == 320),
        "megapixels": (Filters(max_megapixels=0.03), lambda r: r.width == 160),
        "taken": (Filters(taken_after=calendar.timegm((2015, 1, 1, 0, 0, 0))),
                  lambda r: r.taken is not None and r.taken >= "2015"),
        "combined": (Filters(folder=str(photos / "trips"), formats=("jpeg", "webp"), taken_before=calendar.timegm((2016, 1, 1, 0, 0, 0))),
                     lambda r: "/trips/" in r.path and r.format in ("jpeg", "webp") and r.taken is not None and r.taken < "2016"),
    }
    for name, (f, ok) in cases.items():
        matching = [r for r in everything if ok(r)]
        assert 3 <= len(matching) < N, name
        for k in (1, 3, len(matching), len(matching) + 5):
            got = lib.search(Query.text("a green triangle", k=k, filters=f, cutoff="none"))
            # exactly the best k of the matching files, in the unfiltered ranking's order
            assert [r.path for r in got] == [r.path for r in matching[:k]], (name, k)


def test_metadata_recorded_at_index_time(library, photos):
    rows = dict((os.path.basename(p.decode()), (t, f, w, h)) for p, t, f, w, h in sqlite3.connect(
        library.path / "library.db").execute("SELECT path, taken_at, format, width, height FROM files"))
    assert len(rows) == N
    for i in range(N):
        fmt = ("jpeg", "png", "webp")[i % 5 % 3]
        name = f"p{i:03d}.{ {'jpeg': 'jpg', 'png': 'png', 'webp': 'webp'}[fmt] }"
        taken, f, w, h = rows[name]
        t = taken_of(i)
        assert f == fmt and w == h == (224, 320, 160)[i % 7 % 3]
        assert taken == (None if t is None else calendar.timegm((int(t[:4]), int(t[5:7]), int(t[8:10]), 12, 0, 0)))


def make_schema_0002(lib_dir) -> None:
    """The library as schema 0002 left it: no taken_at, format, meta_version or their indexes."""
    con = sqlite3.connect(lib_dir / "library.db")
    for index in ("ix_files_taken_at", "ix_files_mtime_ns", "ix_files_format", "ix_files_pixels"):
        con.execute(f"DROP INDEX {index}")
    for column in ("taken_at", "format", "meta_version"):
        con.execute(f"ALTER TABLE files DROP COLUMN {column}")
    con.execute("DROP TABLE IF EXISTS tags")  # schema 0004
    con.execute("UPDATE alembic_version SET version_num='0002'")
    con.commit()
    con.close()


def test_an_old_library_fills_in_dates_on_its_next_run_without_embedding(library, photos, tmp_path):
    old = tmp_path / "old"
    library.catalog.checkpoint()
    shutil.copytree(library.path, old, ignore=shutil.ignore_patterns("*.lock", "lock"))
    make_schema_0002(old)
    vectors_before = sqlite3.connect(old / "library.db").execute("SELECT id, vector FROM embeddings ORDER BY id").fetchall()
    with Library.open(old, create=False) as lib:  # migrates to 0003: columns there, empty
        con = sqlite3.connect(old / "library.db")
        assert con.execute("SELECT version_num FROM alembic_version").fetchone() == (SCHEMA_HEAD,)
        assert con.execute("SELECT count(*) FROM files WHERE taken_at IS NOT NULL OR meta_version IS NOT NULL"
                           ).fetchone() == (0,)
        f = Filters(taken_after=calendar.timegm((2000, 1, 1, 0, 0, 0)))
        assert lib.search(Query.text("a star", k=5, filters=f, cutoff="none")) == []  # no dates known yet
        report = lib.index([photos])
        assert report.embedded == 0 and report.unchanged == N and report.added == report.updated == 0
        assert not report.skipped
        dated = lib.search(Query.text("a star", k=N, filters=f, cutoff="none"))
        assert len(dated) == sum(taken_of(i) is not None for i in range(N))
        again = lib.index([photos])  # and once read, never again
        assert again.embedded == 0 and again.unchanged == N and again.batches == 0
    new = dict(sqlite3.connect(library.path / "library.db").execute("SELECT path, taken_at FROM files").fetchall())
    backfilled = dict(sqlite3.connect(old / "library.db").execute("SELECT path, taken_at FROM files").fetchall())
    assert backfilled == new
    assert sqlite3.connect(old / "library.db").execute("SELECT id, vector FROM embeddings ORDER BY id").fetchall() \
        == vectors_before
