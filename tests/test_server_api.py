"""The JSON API through an in-process client, against the quick start's library and small libraries of our own."""

from __future__ import annotations

import datetime as dt
import io
import os
import threading

import pytest

from conftest import make_image
from test_server_common import SAMPLES, index, quickstart_library

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from clipsearch import Query, Reader, Term  # noqa: E402
from clipsearch.query import Filters  # noqa: E402
from clipsearch.server import create_app  # noqa: E402
from clipsearch.server.thumbs import ThumbnailStore  # noqa: E402


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    r = Reader.open(quickstart_library(tmp_path_factory))
    yield r
    r.close()


def _client(reader, tmp_path, **options):
    options.setdefault("thumbs_dir", tmp_path / "thumbs")
    options.setdefault("upload_dir", tmp_path / "uploads")
    return TestClient(create_app(reader, **options), base_url="http://localhost")


@pytest.fixture
def client(reader, tmp_path):
    with _client(reader, tmp_path) as c:
        yield c


def _ids(results) -> list[int]:
    return [r["id"] if isinstance(r, dict) else r.embedding_id for r in results]


# -- search -----------------------------------------------------------------------------------------
def test_text_search_is_the_readers_search(client, reader):
    expected = reader.search(Query.parse("a red circle", k=10, cutoff="none"))
    res = client.get("/api/search", params={"q": "a red circle", "limit": 10, "cutoff": "none"})
    assert res.status_code == 200
    body = res.json()
    assert _ids(body["results"]) == _ids(expected)
    assert [r["score"] for r in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-6)
    assert [r["path"] for r in body["results"]] == [r.path for r in expected]
    assert body["results"][0]["thumb"] == f"/api/images/{expected[0].embedding_id}/thumb"
    assert body["more"] is True
    # the six sample images with a red circle come first (captions.csv)
    red_circles = {"sample_00003.jpg", "sample_00006.png", "sample_00010.jpg", "sample_00023.jpg",
                   "sample_00050.jpg", "sample_00059.jpg"}
    assert {os.path.basename(r["path"]) for r in body["results"][:6]} == red_circles


def test_without_a_cutoff_the_querys_default_applies(client, reader, monkeypatch):
    seen: list[Query] = []
    real = reader.search
    monkeypatch.setattr(reader, "search", lambda q: seen.append(q) or real(q))
    body = client.get("/api/search", params={"q": "a red circle"}).json()
    default = Query.parse("a red circle").cutoff
    assert seen[-1].cutoff == default and body["query"]["cutoff"] == default
    assert client.get("/api/status").json()["defaults"] == {"cutoff": default, "sort": "score"}
    client.get("/api/search", params={"q": "a red circle", "cutoff": "none"})
    assert seen[-1].cutoff == "none"


def test_pages_add_up_to_one_search(client, reader):
    expected = _ids(reader.search(Query.parse("a blue square", k=36, cutoff="none")))
    pages, offset = [], 0
    while True:
        body = client.get("/api/search", params={"q": "a blue square", "limit": 7, "offset": offset,
                                                 "cutoff": "none"}).json()
        pages.extend(_ids(body["results"]))
        offset += 7
        if not body["more"]:
            break
    assert pages == expected
    assert len(pages) == 36


def test_query_syntax_and_like_unlike_terms(client, reader):
    text = "2:a red circle - 0.5:a star"
    assert _ids(client.get("/api/search", params={"q": text, "limit": 8}).json()["results"]) == \
        _ids(reader.search(Query.parse(text, k=8)))
    first = reader.search(Query.parse("a green triangle", k=3, cutoff="none"))
    a, b = first[0].embedding_id, first[1].embedding_id
    body = client.get("/api/search", params={"like": a, "limit": 10}).json()
    assert _ids(body["results"]) == _ids(reader.search(Query(terms=(Term.like(a),), k=10)))
    assert a not in _ids(body["results"])  # the image itself is left out of "more like this"
    body = client.get("/api/search", params=[("q", "a green triangle"), ("unlike", str(b)), ("limit", "10")]).json()
    assert _ids(body["results"]) == _ids(reader.search(Query(terms=(Term.text("a green triangle"),
                                                                    Term.like(b, -1.0)), k=10)))
    assert body["query"]["terms"] == [{"kind": "text", "value": "a green triangle", "weight": 1.0},
                                      {"kind": "like", "value": b, "weight": -1.0}]


def test_filters_sort_and_cutoff_reach_the_query(client, reader, monkeypatch):
    seen: list[Query] = []
    real = reader.search
    monkeypatch.setattr(reader, "search", lambda q: seen.append(q) or real(Query(terms=q.terms, k=q.k)))
    res = client.get("/api/search", params=[
        ("q", "a red circle"), ("folder", str(SAMPLES / "images")), ("format", "png"), ("format", "jpeg"),
        ("taken_from", "2024-01-02"), ("taken_to", "2024-01-05"), ("modified_to", "2023-12-31"),
        ("sort", "date"), ("cutoff", "auto"), ("min_score", "0.1"), ("min_width", "100"),
        ("max_megapixels", "12.5"), ("path_glob", "*.png"), ("limit", "5"), ("offset", "5")])
    assert res.status_code == 200, res.text
    q = seen[-1]
    assert q.k == 10 and q.sort == "date" and q.cutoff == "auto" and q.min_score == 0.1
    day = lambda y, m, d: dt.datetime(y, m, d).timestamp()  # noqa: E731 - local midnight, as the page means it
    assert q.filters == Filters(folder=str(SAMPLES / "images"), path_glob="*.png", taken_after=day(2024, 1, 2),
                                taken_before=day(2024, 1, 6), modified_before=day(2024, 1, 1), min_width=100,
                                max_megapixels=12.5, formats=("png", "jpeg"))
    assert res.json()["query"]["filters"]["formats"] == ["png", "jpeg"]


@pytest.mark.parametrize("params, status, words", [
    ({}, 400, "nothing to search for"),
    ({"q": "   "}, 400, "nothing to search for"),
    ({"q": "a\x00b"}, 400, "NUL"),
    ({"q": "x" * 5000}, 400, "limit is"),
    ({"q": "- a dog"}, 400, "empty term"),
    ({"q": "a dog - a dog"}, 400, "cancel"),
    ({"q": "a", "limit": 0}, 422, None),
    ({"q": "a", "limit": 1001}, 422, None),
    ({"q": "a", "offset": 9990, "limit": 20}, 400, "offset + limit"),
    ({"q": "a", "sort": "size"}, 422, None),
    ({"q": "a", "cutoff": "maybe"}, 422, None),
    ({"q": "a", "min_score": "nan"}, 422, None),
    ({"q": "a", "like": 0}, 422, None),
    ({"q": "a", "like": 10 ** 30}, 422, None),
    ({"like": 999999}, 404, "no indexed image with id 999999"),
    ({"q": "a", "folder": "/x\x00y"}, 400, "NUL"),
    ({"q": "a", "format": "../png"}, 422, None),
    ({"q": "a", "taken_to": "2262-01-01"}, 422, None),  # past what nanoseconds in 64 bits hold
    ({"q": "a", "modified_from": "1677-12-31"}, 422, None),
    ({"q": "a", "upload": "0" * 64}, 404, "no longer kept"),
])
def test_bad_searches_are_refused_with_a_reason(client, params, status, words):
    res = client.get("/api/search", params=params)
    assert res.status_code == status, res.text
    if words:
        assert words in res.json()["detail"]


def test_a_library_with_a_non_utf8_file_name(special_library, tmp_path):
    r, ids, photos = special_library
    odd = os.path.join(os.fsencode(photos), ODD_NAME)
    with _client(r, tmp_path) as c:
        res = c.get("/api/search", params={"q": "a photo", "limit": 5})
        assert res.status_code == 200
        assert b"\\udcff" in res.content and res.content.isascii()  # undecodable bytes escaped, as --json does
        [hit] = [x for x in res.json()["results"] if os.fsencode(x["path"]) == odd]
        assert hit["id"] == ids[ODD_NAME]
        assert c.get(hit["thumb"]).status_code == 200
        info = c.get(f"/api/images/{hit['id']}").json()
        assert os.fsencode(info["files"][0]["path"]) == odd


# -- uploads ----------------------------------------------------------------------------------------
def _encode(seed: int, size) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr, "RGB").resize(size, Image.NEAREST).save(out, "PNG")
    return out.getvalue()


def test_upload_search_matches_the_readers_and_pages_reuse_it(client, reader, tmp_path):
    src = Image.open(SAMPLES / "images" / "sample_00003.jpg")
    example = tmp_path / "example.png"
    src.rotate(90).save(example)  # not in the library: the model embeds it
    data = example.read_bytes()
    res = client.post("/api/search/image", content=data, params={"limit": 5}, headers={"content-type": "image/png"})
    assert res.status_code == 200, res.text
    body = res.json()
    expected = _ids(reader.search(Query.image(example, k=10)))
    assert _ids(body["results"]) == expected[:5]
    assert len(body["upload"]) == 64 and str(tmp_path) not in res.text  # no server path in the answer
    nxt = client.get("/api/search", params={"upload": body["upload"], "offset": 5, "limit": 5}).json()
    assert _ids(nxt["results"]) == expected[5:10]
    both = client.get("/api/search", params={"upload": body["upload"], "q": "a yellow star", "limit": 5}).json()
    assert _ids(both["results"]) == _ids(reader.search(Query(terms=(Term.text("a yellow star"), Term.image(example)),
                                                             k=5)))


def test_uploads_are_capped_and_must_be_images(reader, tmp_path):
    with _client(reader, tmp_path, upload_max_bytes=4000, upload_max_pixels=64 * 64) as c:
        small = _encode(1, (40, 40))
        assert len(small) < 4000
        assert c.post("/api/search/image", content=small, headers={"content-type": "image/png"}).status_code == 200
        big = os.urandom(5000)
        res = c.post("/api/search/image", content=big, headers={"content-type": "image/png"})
        assert res.status_code == 413 and "limit" in res.json()["detail"]

        def chunks():  # no Content-Length: the stream itself is cut off
            for _ in range(5):
                yield os.urandom(1000)

        assert c.post("/api/search/image", content=chunks(), headers={"content-type": "image/png"}).status_code == 413
        wide = _encode(2, (200, 30))  # 6,000 pixels > 4,096, but few bytes
        assert len(wide) < 4000
        res = c.post("/api/search/image", content=wide, headers={"content-type": "image/png"})
        assert res.status_code == 413 and "too large" in res.json()["detail"]
        res = c.post("/api/search/image", content=b"GIF89a not really", headers={"content-type": "image/gif"})
        assert res.status_code == 415 and "not a readable image" in res.json()["detail"]
        res = c.post("/api/search/image", content=b"", headers={"content-type": "image/png"})
        assert res.status_code == 415 and "empty" in res.json()["detail"]
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            res = c.post("/api/search/image", content=small, headers={"content-type": ctype})
            assert res.status_code == 415, ctype  # what a cross-site form could send without a preflight


def test_uploads_are_kept_in_a_private_folder_and_removed_at_shutdown(reader, tmp_path):
    with _client(reader, tmp_path) as c:
        res = c.post("/api/search/image", content=_encode(3, (50, 50)), headers={"content-type": "image/png"})
        key = res.json()["upload"]
        [folder] = list((tmp_path / "uploads").iterdir())
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        assert (folder / key).read_bytes() == _encode(3, (50, 50))
        assert oct((folder / key).stat().st_mode & 0o777) == "0o600"
    assert not folder.exists()


# -- image facts, thumbnails, originals -------------------------------------------------------------
ODD_NAME = b"caf\xe9-\xff.png"  # not UTF-8


@pytest.fixture(scope="module")
def special_library(tmp_path_factory, tiny_model):
    """A turned JPEG with EXIF dates, a PNG named .jpg, a file name that is not UTF-8."""
    tmp = tmp_path_factory.mktemp("special")
    photos = tmp / "photos"
    photos.mkdir()
    im = Image.new("RGB", (600, 400), (200, 30, 30))
    im.paste((30, 30, 200), (0, 0, 300, 400))  # left half blue: shows which way it was turned
    ex = Image.Exif()
    ex[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    ex.get_ifd(0x8769)[36867] = "2021:07:14 10:20:30"
    im.save(photos / "turned.jpg", exif=ex, quality=95)
    Image.new("RGB", (80, 60), (0, 200, 0)).save(photos / "really-a-png.jpg", format="PNG")
    os.rename(make_image(tmp / "odd.png", 2), os.path.join(os.fsencode(photos), ODD_NAME))
    index(photos, tmp / "lib", tiny_model)
    r = Reader.open(tmp / "lib")
    ids = {name: r.catalog.file_embedding_id(os.path.join(os.fsencode(photos), name))
           for name in os.listdir(os.fsencode(photos))}
    ids.update({os.fsdecode(k): v for k, v in list(ids.items()) if k != ODD_NAME})
    yield r, ids, photos
    r.close()


def test_image_facts(special_library, tmp_path):
    r, ids, photos = special_library
    with _client(r, tmp_path) as c:
        info = c.get(f"/api/images/{ids['turned.jpg']}").json()
        assert info["taken"] == "2021-07-14T10:20:30"
        assert info["format"] == "JPEG" and info["available"] is True
        [f] = info["files"]
        assert f["path"] == str(photos / "turned.jpg") and f["name"] == "turned.jpg"
        assert f["folder"] == str(photos) and f["size"] == (photos / "turned.jpg").stat().st_size
        assert (f["width"], f["height"]) == (400, 600)  # as the indexer saw it: upright
        assert info["preview"] == f"/api/images/{ids['turned.jpg']}/thumb?size=1024"
        assert c.get(f"/api/images/{ids['really-a-png.jpg']}").json()["taken"] is None


def test_thumbnails_are_upright_small_cached_and_validated(special_library, tmp_path):
    r, ids, photos = special_library
    thumbs = tmp_path / "thumbs"
    with _client(r, tmp_path, thumbs_dir=thumbs) as c:
        res = c.get(f"/api/images/{ids['turned.jpg']}/thumb")
        assert res.status_code == 200 and res.headers["content-type"] == "image/webp"
        assert res.headers["cache-control"] == "private, max-age=31536000, immutable"
        im = Image.open(io.BytesIO(res.content))
        assert im.format == "WEBP" and im.size == (171, 256)  # 400x600 upright, longest side 256
        top = im.convert("RGB").getpixel((85, 20))
        assert top[2] > 150 and top[0] < 100  # the blue half is on top once turned as EXIF says
        [cached] = list(thumbs.rglob("*.webp"))
        assert cached.read_bytes() == res.content
        assert c.get(f"/api/images/{ids['turned.jpg']}/thumb", headers={"if-none-match": res.headers["etag"]}
                     ).status_code == 304
        cached.write_bytes(b"cached bytes")  # a hit is served from the cache, not made again
        assert c.get(f"/api/images/{ids['turned.jpg']}/thumb").content == b"cached bytes"
        big = c.get(f"/api/images/{ids['turned.jpg']}/thumb", params={"size": 1024})
        assert Image.open(io.BytesIO(big.content)).size == (400, 600)  # never enlarged
        assert c.get(f"/api/images/{ids['turned.jpg']}/thumb", params={"size": 5000}).status_code == 422


def test_originals_are_sent_with_the_type_their_bytes_have(special_library, tmp_path):
    r, ids, photos = special_library
    with _client(r, tmp_path) as c:
        res = c.get(f"/api/images/{ids['really-a-png.jpg']}/original")
        assert res.status_code == 200
        assert res.content == (photos / "really-a-png.jpg").read_bytes()
        assert res.headers["content-type"] == "image/png"  # from the decoder, not from the name
        assert res.headers["x-content-type-options"] == "nosniff"
        assert res.headers["content-disposition"] == "inline; filename*=UTF-8''really-a-png.jpg"


def test_thumbnail_cache_keeps_under_its_cap_dropping_the_least_recently_used(tmp_path):
    store = ThumbnailStore(tmp_path / "t", max_bytes=10_000)
    keys = [f"{i:02x}" * 20 for i in range(12)]
    for n, key in enumerate(keys):
        store.put(key, 256, b"x" * 1000)
        path = store._path(key, 256)
        os.utime(path, (1_000_000 + n, 1_000_000 + n))  # written in this order, a second apart
        if n == 8:
            os.utime(store._path(keys[0], 256), (1_000_100, 1_000_100))  # the first one was used again since
    files = list((tmp_path / "t").rglob("*.webp"))
    assert sum(f.stat().st_size for f in files) <= 10_000
    left = {f.stem for f in files}
    assert keys[0] in left and keys[-1] in left
    assert keys[1] not in left and keys[2] not in left  # the least recently used went first


# -- status, schema, threads --------------------------------------------------------------------------
def test_status_and_openapi(client, reader):
    status = client.get("/api/status").json()
    assert status["model"] == "shapes" and status["images"] == 36 and status["dim"] == 128
    assert status["roots"] == [str(SAMPLES)]
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/images/{image_id}", "/api/images/{image_id}/thumb",
            "/api/images/{image_id}/original", "/api/status"} == set(schema["paths"])
    assert client.get("/docs").status_code == 404  # its page would load scripts from a CDN
    page = client.get("/")
    assert page.status_code == 200 and b'<script src="/static/app.js"' in page.content
    assert b"http://" not in page.content and b"https://" not in page.content  # nothing from the internet
    for name in ("app.js", "style.css"):
        res = client.get(f"/static/{name}")
        assert res.status_code == 200
        assert b"http://" not in res.content and b"https://" not in res.content


def test_many_threads_share_the_app(reader, tmp_path):
    texts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
    expected = {t: _ids(reader.search(Query.text(t, k=10))) for t in texts}
    start = threading.Barrier(8)
    got, errors = [], []

    def worker(i: int) -> None:
        try:
            start.wait()
            for j in range(5):
                t = texts[(i + j) % 4]
                res = c.get("/api/search", params={"q": t, "limit": 10})
                got.append((t, _ids(res.json()["results"])))
        except BaseException as e:  # surfaced below
            errors.append(e)

    with _client(reader, tmp_path) as c:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(got) == 40 and all(ids == expected[t] for t, ids in got)
