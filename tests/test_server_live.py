"""A running server sees images that `clipsearch index` commits in another process, without a restart:
the other process is held right after its first committed batch, so the server is asked while it runs."""

from __future__ import annotations

import subprocess
import sys

from conftest import make_image
from test_server_common import index

import httpx  # noqa: E402

from clipsearch import Reader  # noqa: E402
from clipsearch.server import create_app  # noqa: E402
from clipsearch.server.runner import ServerThread  # noqa: E402

# `clipsearch index` with a hook: after its first committed batch it says so and waits for a line on stdin
HELD_INDEXER = r"""
import sys
from clipsearch.store.catalog import Catalog
from clipsearch.cli import main

real = Catalog.commit_batch
state = {"held": False}

def commit_batch(self, records, **kw):
    seq = real(self, records, **kw)
    if not state["held"]:
        state["held"] = True
        print(f"committed {sum(r.error is None for r in records)}", flush=True)
        sys.stdin.readline()
    return seq

Catalog.commit_batch = commit_batch
sys.argv = ["clipsearch", *sys.argv[1:]]
main()
"""


def test_a_query_during_an_index_run_sees_its_committed_images(tmp_path, tiny_model):
    first, second = tmp_path / "first", tmp_path / "second"
    for i in range(6):
        make_image(first / f"a{i}.png", 300 + i)
    for i in range(20):
        make_image(second / f"b{i:02d}.png", 400 + i)
    lib = tmp_path / "lib"
    index(first, lib, tiny_model)
    reader = Reader.open(lib)
    app = create_app(reader, thumbs_dir=tmp_path / "thumbs", upload_dir=tmp_path / "uploads")
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        def count() -> tuple[int, int]:
            res = http.get("/api/search", params={"q": "a picture", "limit": 100, "cutoff": "none"})
            assert res.status_code == 200, res.text
            return len(res.json()["results"]), http.get("/api/status").json()["images"]

        assert count() == (6, 6)
        child = subprocess.Popen(
            [sys.executable, "-c", HELD_INDEXER, "index", str(second), "--library", str(lib), "-q",
             "--batch-size", "4"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()
            assert line.startswith("committed "), (line, child.stderr.read() if not line else "")
            n = int(line.split()[1])
            assert 0 < n < 20
            assert child.poll() is None  # still running, holding the writer lock
            assert count() == (6 + n, 6 + n)
            found = http.get("/api/search", params={"q": "a picture", "limit": 100, "cutoff": "none"}).json()
            thumbs = [r["thumb"] for r in found["results"]]
            assert all(http.get(t).status_code == 200 for t in thumbs)  # the new images are served too
            child.stdin.write("go on\n")
            child.stdin.flush()
            _, err = child.communicate(timeout=300)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 0, err
        assert count() == (26, 26)
    reader.close()
