"""ls (and why files failed), forget ROOT, status counting failed files and offline roots, offline results."""

from __future__ import annotations

import json
import os
import shutil

from clipsearch import Library
from clipsearch.reader import Reader
from clipsearch.tools.manage import forget, list_files, offline_roots

from conftest import make_image, run_cli


def _two_roots(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(4):
        make_image(a / f"a{i}.png", 100 + i)
        make_image(b / f"b{i}.png", 200 + i)
    shutil.copy(a / "a0.png", b / "copy_of_a0.png")  # one content in both roots
    return a, b


def test_ls_failed_shows_the_reason_after_a_second_run(tmp_path, tiny_model):
    photos = tmp_path / "p"
    make_image(photos / "good.png", 1)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    lib = str(tmp_path / "lib")
    first = run_cli("index", str(photos), "--library", lib, "--model", tiny_model, "-q", check=True)
    assert "skipped" in first.stderr and "broken.jpg" in first.stderr
    second = run_cli("index", "--library", lib, "-q", "--json", check=True)
    report = json.loads(second.stdout)
    assert report["skipped"] == [] and report["unchanged"] == 2 and report["failed"] == 1  # folded into unchanged
    plain = run_cli("index", "--library", lib, "-q", check=True)
    assert "1 file(s) of the library could not be indexed" in plain.stderr and "ls --failed" in plain.stderr
    res = run_cli("ls", "--failed", "--library", lib, "--json", check=True)
    rows = json.loads(res.stdout)
    assert [os.path.basename(r["path"]) for r in rows] == ["broken.jpg"]
    assert rows[0]["status"] == "failed" and rows[0]["reason"] and rows[0]["id"] is None
    text = run_cli("ls", "--failed", "--library", lib, check=True).stdout
    assert "broken.jpg: " + rows[0]["reason"] in text
    everything = json.loads(run_cli("ls", "--library", lib, "--json", check=True).stdout)
    assert sorted((os.path.basename(r["path"]), r["status"]) for r in everything) == [("broken.jpg", "failed"),
                                                                                     ("good.png", "ok")]
    status = json.loads(run_cli("status", "--library", lib, "--json", check=True).stdout)
    assert status["failed"] == 1 and status["images"] == 1 and status["offline_roots"] == []


def test_ls_root_filter(tmp_path, tiny_model):
    a, b = _two_roots(tmp_path)
    with Library.open(tmp_path / "lib", model=tiny_model) as lib:
        lib.index([a, b])
        under_a = [os.path.basename(e.path) for e in list_files(lib.catalog, root=a)]
        everything = list(list_files(lib.catalog))
    assert under_a == ["a0.png", "a1.png", "a2.png", "a3.png"]
    assert len(everything) == 9


def test_forget_removes_a_root_everywhere_and_check_passes(tmp_path, tiny_model):
    a, b = _two_roots(tmp_path)
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, model=tiny_model) as lib:
        lib.index([a, b])
        before = lib.status()
        report = forget(lib, a)
        assert report.files == 4
        assert lib.check().ok
        results = lib.search(image=str(a / "a1.png"), k=100)
        paths = {r.path for r in results}
        assert paths and not any(p.startswith(str(a) + os.sep) for p in paths)
        assert str(b / "copy_of_a0.png") in paths  # a vector another root still uses stays
        status = lib.status()
        assert status["roots"] == [str(b)] and status["images"] == 5
        assert status["vectors"] == before["vectors"] - 3
        assert all(not e.path.startswith(str(a)) for e in list_files(lib.catalog))
        again = lib.index()  # every known root: the forgotten one is not among them
        assert again.added == 0 and again.roots == [str(b)]
    with Reader.open(lib_dir) as reader:  # a fresh process's view: the published cache agrees
        paths = {r.path for r in reader.search(image=str(a / "a2.png"), k=100)}
        assert not any(p.startswith(str(a) + os.sep) for p in paths)
        index = reader.vector_index()
        assert index.ntotal == status["vectors"]
    res = run_cli("check", "--library", str(lib_dir), check=True)
    assert res.stdout.startswith("ok")
    with Library.open(lib_dir) as lib:  # indexing it again reuses the kept vectors: no model run for them
        back = lib.index([a])
        assert back.added == 4 and back.embedded == 0


def test_forget_an_unknown_folder_is_a_clear_error(tmp_path, tiny_model):
    a, b = _two_roots(tmp_path)
    lib = str(tmp_path / "lib")
    run_cli("index", str(a), "--library", lib, "--model", tiny_model, "-q", check=True)
    res = run_cli("forget", str(b), "--library", lib)
    assert res.returncode == 1
    assert "is not a folder of this library" in res.stderr and str(a) in res.stderr and "Traceback" not in res.stderr
    res = run_cli("forget", str(a), "--library", lib, "--json", check=True)
    assert json.loads(res.stdout)["files"] == 4


def test_offline_root_is_reported_and_its_files_marked_offline(tmp_path, tiny_model):
    a, b = _two_roots(tmp_path)
    lib = str(tmp_path / "lib")
    run_cli("index", str(a), str(b), "--library", lib, "--model", tiny_model, "-q", check=True)
    a.rename(tmp_path / "unmounted")  # the disk is gone
    status = json.loads(run_cli("status", "--library", lib, "--json", check=True).stdout)
    assert status["offline_roots"] == [str(a)] and status["offline"] == 4 and status["images"] == 9
    text = run_cli("status", "--library", lib, check=True).stdout
    assert f"{a}  (offline" in text and f"{b}  (offline" not in text
    res = run_cli("query", "--image", str(b / "b1.png"), "--library", lib, "-k", "20", "--json", check=True)
    results = json.loads(res.stdout)
    assert results
    for r in results:
        assert r["offline"] == r["path"].startswith(str(a) + os.sep)
    assert any(r["offline"] for r in results) and not all(r["offline"] for r in results)
    listed = json.loads(run_cli("ls", "--library", lib, "--json", check=True).stdout)
    assert {r["path"]: r["offline"] for r in listed} == {r["path"]: r["path"].startswith(str(a) + os.sep)
                                                          for r in listed}
    a.mkdir()  # an empty mount point is offline too
    with Library.open(lib) as opened:
        assert offline_roots(opened.catalog) == [str(a)]
    a.rmdir()
    (tmp_path / "unmounted").rename(a)  # back: nothing offline, nothing re-embedded
    status = json.loads(run_cli("status", "--library", lib, "--json", check=True).stdout)
    assert status["offline_roots"] == [] and status["offline"] == 0
    report = json.loads(run_cli("index", "--library", lib, "-q", "--json", check=True).stdout)
    assert report["embedded"] == 0 and report["unchanged"] == 9
