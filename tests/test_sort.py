"""sort="date" orders results by the photo's own date (EXIF DateTimeOriginal), falling back to the file's
modification time and saying so; sort="path" by path; neither changes which results come back. On the
shapes demo model, with rendered JPEGs carrying EXIF dates written by Pillow."""

from __future__ import annotations

import calendar
import io
import os
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library
from clipsearch.query import Query
from clipsearch.training import shapes

DAY = 86_400


def exif_with_date(when: str) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = when  # DateTimeOriginal, in the Exif IFD
    return exif


def write_jpeg(path, seed: int, index: int, taken: str | None, mtime: float) -> None:
    scene = shapes.random_scene(shapes.scene_rng(seed, index))
    arr = shapes.render_array(scene, np.random.default_rng(index))
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=90, **({"exif": exif_with_date(taken)} if taken else {}))
    path.write_bytes(buf.getvalue())
    os.utime(path, (mtime, mtime))


# file -> (EXIF date or None, modification time): the taken order, the mtime order and the name order all differ
PHOTOS = {
    "a.jpg": ("2019:05:01 10:00:00", calendar.timegm((2024, 1, 1, 0, 0, 0))),
    "b.jpg": ("2021:08:15 18:30:05", calendar.timegm((2018, 1, 1, 0, 0, 0))),
    "c.jpg": ("2015:12:24 23:59:59", calendar.timegm((2023, 6, 1, 0, 0, 0))),
    "d.jpg": ("2020:02:29 12:00:00", calendar.timegm((2016, 3, 1, 0, 0, 0))),
    "e.jpg": (None, calendar.timegm((2020, 6, 1, 0, 0, 0))),  # no EXIF: its mtime counts
    "f.jpg": (None, calendar.timegm((2014, 1, 1, 0, 0, 0))),
    "g.jpg": ("2022:01:01 00:00:01", calendar.timegm((2022, 12, 1, 0, 0, 0))),
    "h.jpg": ("2017:07:07 07:07:07", calendar.timegm((2025, 1, 1, 0, 0, 0))),
}


def photo_seconds(name: str) -> float:
    taken, mtime = PHOTOS[name]
    if taken is None:
        return mtime
    return calendar.timegm(datetime.strptime(taken, "%Y:%m:%d %H:%M:%S").timetuple())


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("sort")
    photos = root / "photos"
    photos.mkdir()
    for i, (name, (taken, mtime)) in enumerate(sorted(PHOTOS.items())):
        write_jpeg(photos / name, 31, i, taken, mtime)
    lib = Library.open(root / "lib", model="shapes")
    lib.index([photos])
    yield lib, photos
    lib.close()


def test_sort_date_orders_by_the_photos_own_date_newest_first(library):
    lib, photos = library
    by_score = lib.search(Query.text("a red circle", k=8))
    by_date = lib.search(Query.text("a red circle", k=8, sort="date"))
    names = [os.path.basename(r.path) for r in by_date]
    assert names == sorted(PHOTOS, key=photo_seconds, reverse=True)
    # the mtime order would differ: the test would see a sort by modification time
    assert names != sorted(PHOTOS, key=lambda n: PHOTOS[n][1], reverse=True)
    assert {r.path for r in by_date} == {r.path for r in by_score}
    assert [r.rank for r in by_date] == list(range(1, 9))
    for r in by_date:
        taken, _ = PHOTOS[os.path.basename(r.path)]
        if taken is None:
            assert r.taken is None and r.date_source == "modified"
        else:
            assert r.taken == datetime.strptime(taken, "%Y:%m:%d %H:%M:%S").isoformat() and r.date_source == "taken"
        d = r.to_dict()
        assert d["taken"] == r.taken and d["date_source"] == r.date_source and d["format"] == "jpeg"
        assert datetime.fromisoformat(d["modified"]).timestamp() == PHOTOS[os.path.basename(r.path)][1]


def test_sort_reorders_only_the_results_that_passed(library):
    lib, photos = library
    for text in ("a red circle", "a large blue square", "a star"):
        top = lib.search(Query.text(text, k=3))
        dated = lib.search(Query.text(text, k=3, sort="date"))
        pathed = lib.search(Query.text(text, k=3, sort="path"))
        assert {r.path for r in dated} == {r.path for r in pathed} == {r.path for r in top}
        assert [r.path for r in pathed] == sorted(r.path for r in top)
        assert [r.path for r in dated] == sorted((r.path for r in top), key=lambda p: -photo_seconds(os.path.basename(p)))
        # a score threshold first, then the sort
        cut = top[1].score
        assert {r.path for r in lib.search(Query.text(text, k=8, sort="date", min_score=cut))} == \
            {r.path for r in top[:2]}


def test_taken_filter_uses_the_exif_date(library):
    lib, photos = library
    from clipsearch.query import Filters

    f = Filters(taken_after=calendar.timegm((2019, 1, 1, 0, 0, 0)), taken_before=calendar.timegm((2021, 1, 1, 0, 0, 0)))
    got = lib.search(Query.text("a star", k=8, filters=f))
    assert sorted(os.path.basename(r.path) for r in got) == ["a.jpg", "d.jpg"]
