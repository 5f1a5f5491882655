"""One writer per library (C-11) and a damaged cache (D-3): a second `index` exits at once naming the
holder; every kind of cache damage is detected, set aside as .corrupt and rebuilt, never a crash loop."""

from __future__ import annotations

import json
import os

import pytest

from clipsearch import Library
from clipsearch.vector_index import VectorIndex

from conftest import make_image, run_cli
from reliability_helpers import FakeEncoder


def test_second_writer_exits_at_once_naming_the_holder(tmp_path, tiny_model):
    photos = tmp_path / "p"
    make_image(photos / "a.png", 1)
    with Library.open(tmp_path / "lib", model=tiny_model) as holder:
        holder.index([photos])
        holder.lock.acquire()  # as a running `index` holds it
        # the holder keeps the lock while the child runs: a child that waited for it would fail at run_cli's timeout
        res = run_cli("index", str(photos), "--library", str(tmp_path / "lib"), "-q")
        assert res.returncode == 1, res.stderr
        assert f'"pid": {os.getpid()}' in res.stderr and "being indexed by" in res.stderr
        assert "database is locked" not in res.stderr
        # a query meanwhile answers from the last commit
        res = run_cli("query", "x", "--library", str(tmp_path / "lib"), "--json")
        assert res.returncode == 0 and len(json.loads(res.stdout)) == 1, res.stderr
    with Library.open(tmp_path / "lib", create=False) as again:  # released with the holder
        again.lock.acquire()


DAMAGE = ["empty", "10-bytes", "half", "minus-one", "flipped-body-byte", "wrong-magic", "other-library", "other-model",
          "bad-header-json"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_every_kind_of_cache_damage_is_rebuilt(tmp_path, damage):
    photos = tmp_path / "p"
    for i in range(6):
        make_image(photos / f"c{i}.png", 10 + i)
    enc = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=enc) as lib:
        lib.index([photos])
        expected = [(r.path, r.score) for r in lib.search("probe", k=6)]
    cache = tmp_path / "lib" / "index.faiss"
    data = cache.read_bytes()
    if damage == "empty":
        cache.write_bytes(b"")
    elif damage == "10-bytes":
        cache.write_bytes(data[:10])
    elif damage == "half":
        cache.write_bytes(data[: len(data) // 2])
    elif damage == "minus-one":
        cache.write_bytes(data[:-1])
    elif damage == "flipped-body-byte":
        b = bytearray(data)
        b[-10] ^= 1
        cache.write_bytes(bytes(b))
    elif damage == "wrong-magic":
        cache.write_bytes(b"XXXXXXXX" + data[8:])
    elif damage == "bad-header-json":
        cache.write_bytes(data[:12] + b"[" + data[13:])
    else:
        other_enc = FakeEncoder(name="other-model") if damage == "other-model" else enc
        with Library.open(tmp_path / damage, encoder=other_enc) as other:
            other.index([photos])
        cache.write_bytes((tmp_path / damage / "index.faiss").read_bytes())
    (tmp_path / "lib" / f"index.faiss.tmp.{2 ** 22 + 7}").write_bytes(b"")  # a zero-length orphan of a dead writer
    with Library.open(tmp_path / "lib", encoder=enc) as lib:
        r = lib.check()
        assert not r.ok and r.cache == ("mismatched" if damage.startswith("other-") else "damaged"), r.to_dict()
        got = [(x.path, x.score) for x in lib.search("probe", k=6)]  # queries stay correct
        assert [p for p, _ in got] == [p for p, _ in expected]
        lib.index([photos])  # a writer publishes a good cache again and removes the orphan
        assert lib.check().ok
    VectorIndex.load(cache)
    assert not list((tmp_path / "lib").glob("index.faiss.tmp.*"))
