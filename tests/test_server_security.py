"""Safety of the web server: Host header (DNS rebinding), cross-site requests, the access token, response
headers, and the path-traversal list of reliability.md section S (46) against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import os

import pytest

from conftest import make_image
from test_server_common import index, quickstart_library, raw_get

from fastapi.testclient import TestClient  # noqa: E402

from clipsearch import Reader  # noqa: E402
from clipsearch.server import create_app  # noqa: E402
from clipsearch.server.runner import ServerThread  # noqa: E402
from clipsearch.server.security import cookie_name  # noqa: E402

TOKEN = "Zt0ken-for-tests_1234567890abcdef"
PASSWD = open("/etc/passwd", "rb").read()[:40] if os.path.exists("/etc/passwd") else b"root:x:0:0"


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    r = Reader.open(quickstart_library(tmp_path_factory))
    yield r
    r.close()


def _client(reader, tmp_path, base="http://localhost", **options):
    app = create_app(reader, thumbs_dir=tmp_path / "thumbs", upload_dir=tmp_path / "uploads", **options)
    return TestClient(app, base_url=base, follow_redirects=False)


# -- the Host header ----------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:1234",
                                  "[::1]", "[::1]:8000"])
def test_loopback_host_names_are_answered(reader, tmp_path, host):
    with _client(reader, tmp_path) as c:
        assert c.get("/api/status", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
                                  "localhost.", "[::1", "[::2]:80", "localhost:abc", "localhost:8000:1", "", "::1",
                                  "10.0.0.5", "[::1]x"])
def test_other_host_names_are_refused(reader, tmp_path, host):
    with _client(reader, tmp_path) as c:
        res = c.get("/api/search", params={"q": "a red circle"}, headers={"host": host})
        assert res.status_code == 403
        assert "host" in res.json()["detail"]
        assert res.headers["x-content-type-options"] == "nosniff"


def test_forwarded_host_headers_are_not_trusted(reader, tmp_path):
    with _client(reader, tmp_path) as c:
        spoof = {"host": "evil.example", "x-forwarded-host": "localhost", "forwarded": "host=localhost",
                 "x-forwarded-for": "127.0.0.1", "x-real-ip": "127.0.0.1"}
        assert c.get("/api/status", headers=spoof).status_code == 403
        honest = {"host": "localhost", "x-forwarded-host": "evil.example"}
        assert c.get("/api/status", headers=honest).status_code == 200


def test_hosts_with_a_port_and_ip_literals(reader, tmp_path):
    with _client(reader, tmp_path, allowed_hosts=("localhost:8123", "photos.lan")) as c:
        assert c.get("/api/status", headers={"host": "localhost:8123"}).status_code == 200
        assert c.get("/api/status", headers={"host": "localhost:9999"}).status_code == 403
        assert c.get("/api/status", headers={"host": "localhost"}).status_code == 403  # port 80 implied
        assert c.get("/api/status", headers={"host": "photos.lan:1"}).status_code == 200
        assert c.get("/api/status", headers={"host": "192.168.1.20:8123"}).status_code == 403
    with _client(reader, tmp_path, allowed_hosts=("localhost:8123",), allow_ip_hosts=True) as c:
        assert c.get("/api/status", headers={"host": "192.168.1.20:8123"}).status_code == 200
        assert c.get("/api/status", headers={"host": "[fe80::1]:8123"}).status_code == 200
        assert c.get("/api/status", headers={"host": "rebind.evil.example:8123"}).status_code == 403


# -- other sites --------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"}, {"origin": "null"}, {"origin": "http://localhost:1"},
    {"origin": "file://"}, {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"},
    {"sec-fetch-site": "cross-site", "sec-fetch-mode": "cors"},
    {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"},  # a link straight into the API
])
def test_cross_site_requests_are_refused(reader, tmp_path, headers):
    with _client(reader, tmp_path) as c:
        res = c.get("/api/search", params={"q": "a red circle"}, headers=headers)
        assert res.status_code == 403
        assert "access-control-allow-origin" not in res.headers
        res = c.post("/api/search/image", content=b"x", headers={**headers, "content-type": "image/png"})
        assert res.status_code == 403


def test_same_origin_and_followed_links_are_answered(reader, tmp_path):
    with _client(reader, tmp_path) as c:
        assert c.get("/api/status", headers={"origin": "http://localhost"}).status_code == 200
        same = {"sec-fetch-site": "same-origin", "sec-fetch-mode": "cors"}
        assert c.get("/api/status", headers=same).status_code == 200
        link = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}  # a bookmark shared in a chat
        assert c.get("/", params={"q": "a red circle"}, headers=link).status_code == 200


def test_no_cors_at_all(reader, tmp_path):
    with _client(reader, tmp_path) as c:
        pre = c.options("/api/search",
                        headers={"origin": "http://evil.example", "access-control-request-method": "GET"})
        assert pre.status_code in (403, 405)
        assert not [h for h in pre.headers if h.startswith("access-control-")]
        res = c.get("/api/search", params={"q": "a red circle"})
        assert res.status_code == 200
        assert not [h for h in res.headers if h.startswith("access-control-")]


def test_every_response_carries_the_safety_headers(reader, tmp_path):
    with _client(reader, tmp_path) as c:
        for res in (c.get("/"), c.get("/api/status"), c.get("/api/images/1/thumb"), c.get("/static/app.js"),
                    c.get("/nothing"), c.get("/api/status", headers={"host": "evil.example"})):
            assert res.headers["x-content-type-options"] == "nosniff"
            assert "default-src 'none'" in res.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in res.headers["content-security-policy"]
            assert res.headers["referrer-policy"] == "no-referrer"
            assert res.headers["cross-origin-resource-policy"] == "same-origin"


# -- the token ----------------------------------------------------------------------------------------
def test_the_token_is_required_on_every_request(reader, tmp_path):
    with _client(reader, tmp_path, token=TOKEN) as c:
        for path in ("/", "/api/status", "/api/search?q=a", "/static/app.js", "/openapi.json", "/api/images/1/thumb"):
            res = c.get(path)
            assert res.status_code == 401, path
        assert b"?token=" in c.get("/").content  # the page says what to do
        assert c.post("/api/search/image", content=b"x", headers={"content-type": "image/png"}).status_code == 401
        for scheme in ("token", "Bearer", "TOKEN"):
            assert c.get("/api/status", headers={"authorization": f"{scheme} {TOKEN}"}).status_code == 200
        for wrong in (TOKEN[:-1], TOKEN + "x", "", TOKEN.upper()):
            assert c.get("/api/status", headers={"authorization": f"token {wrong}"}).status_code == 401
            c.cookies.set(cookie_name(TOKEN), wrong)
            assert c.get("/api/status").status_code == 401
            c.cookies.clear()
        assert c.get("/api/status", params={"token": TOKEN}).status_code == 200  # API calls: no redirect
        assert c.get("/api/status", params={"token": "nope"}).status_code == 401


def test_a_token_in_the_url_becomes_a_cookie_and_leaves_the_url(reader, tmp_path):
    with _client(reader, tmp_path, token=TOKEN) as c:
        res = c.get("/", params={"q": "a red circle", "token": TOKEN, "sort": "date"})
        assert res.status_code == 303
        assert res.headers["location"] == "/?q=a+red+circle&sort=date"
        cookie = res.headers["set-cookie"]
        assert cookie.startswith(f"{cookie_name(TOKEN)}={TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        c.cookies.set(cookie_name(TOKEN), TOKEN)
        page = c.get("/", params={"q": "a red circle"})
        assert page.status_code == 200
        for res in (page, c.get("/api/status"), c.get("/openapi.json"), c.get("/static/app.js"),
                    c.get("/api/search", params={"q": "a red circle"})):
            assert res.status_code == 200
            assert TOKEN.encode() not in res.content  # never echoed back
        assert cookie_name(TOKEN) != cookie_name(TOKEN + "2")  # two servers keep their own cookies


# -- the traversal list, over real HTTP ---------------------------------------------------------------
@pytest.fixture(scope="module")
def traversal(tmp_path_factory, tiny_model):
    """A library whose files are then attacked: one swapped for a symlink to /etc/passwd, one link (followed at
    index time) to an image outside the roots, one deleted (its id tombstoned), one overwritten."""
    tmp = tmp_path_factory.mktemp("traversal")
    photos, outside = tmp / "photos", tmp / "outside"
    for i, name in enumerate(["keep", "swapped", "deleted", "changed"]):
        make_image(photos / f"{name}.png", 10 + i)
    make_image(outside / "secret.png", 20)
    os.symlink(outside / "secret.png", photos / "link-out.png")
    lib = tmp / "lib"
    index(photos, lib, tiny_model, follow_symlinks=True)
    r = Reader.open(lib)
    ids = {p.stem: r.catalog.file_embedding_id(os.fsencode(p)) for p in photos.iterdir()}
    app = create_app(r, thumbs_dir=tmp / "thumbs", upload_dir=tmp / "uploads")
    with ServerThread(app) as server:
        before = {k: raw_get(server.port, f"/api/images/{v}/original".encode())[0] for k, v in ids.items()}
        thumb_before = raw_get(server.port, f"/api/images/{ids['swapped']}/thumb".encode())  # now cached
        os.unlink(photos / "deleted.png")
        index(photos, lib, tiny_model, follow_symlinks=True)  # deleted.png leaves the library: its id is dead
        assert r.catalog.file_embedding_id(os.fsencode(photos / "deleted.png")) is None
        # then the attacks on indexed files, with no index run after them
        os.unlink(photos / "swapped.png")
        os.symlink("/etc/passwd", photos / "swapped.png")
        make_image(photos / "changed.png", 99, size=(60, 30))  # new content, not indexed
        yield server, ids, before, thumb_before
    r.close()


ATTACKS = [
    b"/api/images/../../../../etc/passwd", b"/api/images/1/../../../../../etc/passwd",
    b"/api/images/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", b"/api/images/..%2f..%2f..%2fetc%2fpasswd/original",
    b"/api/images/%252e%252e%252f%252e%252e%252fetc%252fpasswd", b"/api/images/%252e%252e/thumb",
    b"/api/images/..\\..\\..\\etc\\passwd", b"/api/images/..%5c..%5c..%5cetc%5cpasswd/original",
    b"/api/images//etc/passwd", b"/api/images/%2fetc%2fpasswd/original", b"/api/images/C:%5cwindows%5cwin.ini",
    b"/api/images/1%00/original", b"/api/images/%00", b"/api/images/1%00.png/thumb",
    b"/api/images/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd", b"/api/images/%c0%ae%c0%ae/original",
    b"/api/images/%ef%bc%8e%ef%bc%8e%ef%bc%8f%ef%bc%8e%ef%bc%8e%ef%bc%8fetc%ef%bc%8fpasswd",
    b"/api/images/-1/original", b"/api/images/-1/thumb", b"/api/images/0", b"/api/images/0/original",
    b"/api/images/99999999999999999999999/original", b"/api/images/9223372036854775808/thumb",
    b"/api/images/9223372036854775807/original", b"/api/images/1e3/original", b"/api/images/+1/original",
    b"/api/images/%d9%a1/original", b"/api/images/0x1/original", b"/api/images/%20%31/original",
    b"/static/../../../../../etc/passwd", b"/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    b"/static/..%2f..%2f..%2f..%2fetc%2fpasswd", b"/static//etc/passwd", b"/static/%2fetc%2fpasswd",
    b"/static/..%5c..%5cserver%5c__init__.py", b"/static/../app.py", b"/static/%2e%2e/app.py",
    b"/../../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"//etc/passwd", b"/etc/passwd",
    b"http://127.0.0.1/etc/passwd",
]


@pytest.mark.parametrize("target", ATTACKS, ids=[a.decode("latin-1")[:60] for a in ATTACKS])
def test_traversal_list_answers_404_or_403_and_no_file_bytes(traversal, target):
    server = traversal[0]
    status, headers, body = raw_get(server.port, target)
    assert status in (403, 404), (status, body[:200])
    assert PASSWD not in body and b"root:" not in body
    assert b"create_app" not in body and b"import" not in body  # no source file either
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name, expected", [("swapped", 403), ("link-out", 403), ("deleted", 404), ("changed", 404)])
@pytest.mark.parametrize("what", ["original", "thumb", "thumb?size=1024", ""])
def test_files_that_are_not_the_indexed_ones_are_never_sent(traversal, name, expected, what):
    server, ids, before, thumb_before = traversal
    assert before["keep"] == 200
    if name != "link-out":
        assert before[name] == 200  # it was served while it was the indexed file
    target = f"/api/images/{ids[name]}" + (f"/{what}" if what else "")
    status, headers, body = raw_get(server.port, target.encode())
    if what == "":  # the facts: the catalog's rows, nothing read from a refused file
        if name == "deleted":
            assert status == 404
        else:
            import json

            info = json.loads(body)
            assert status == 200 and info["available"] is False and info["format"] is None
        return
    assert status == expected, body
    assert PASSWD not in body and b"root:" not in body
    assert not headers.get("content-type", "").startswith("image/")


def test_a_cached_thumbnail_is_not_sent_for_a_swapped_file(traversal):
    server, ids, _, thumb_before = traversal
    assert thumb_before[0] == 200 and thumb_before[1]["content-type"] == "image/webp"
    status, _, body = raw_get(server.port, f"/api/images/{ids['swapped']}/thumb".encode())
    assert status == 403 and body != thumb_before[2]
    ok, _, _ = raw_get(server.port, f"/api/images/{ids['keep']}/thumb".encode())
    assert ok == 200


def test_a_duplicated_host_header_is_refused(traversal):
    server = traversal[0]
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.split()[1] in (b"400", b"403")


def test_no_host_header_is_refused(traversal):
    server = traversal[0]
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"GET /api/status HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.split()[1] in (b"400", b"403")


def test_search_parameters_never_name_files(traversal):
    server, ids, _, _ = traversal
    for target in (b"/api/search?like=/etc/passwd", b"/api/search?like=..%2f..%2fetc%2fpasswd",
                   b"/api/search?upload=../../etc/passwd", b"/api/search?upload=%2fetc%2fpasswd",
                   b"/api/search?q=a&image=/etc/passwd&image_url=http://127.0.0.1:1/"):
        status, _, body = raw_get(server.port, target)
        assert 400 <= status < 500 or b'"results"' in body, (target, status)
        assert PASSWD not in body and b"root:" not in body
    # a parameter the API does not have is ignored, never fetched or opened: the answer is the words' search
    status, _, body = raw_get(server.port, b"/api/search?q=a&image_url=http://127.0.0.1:9/x.png")
    assert status == 200

