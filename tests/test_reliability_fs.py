"""The file system (reliability.md section F, cases 27-34, 36-37; 35 is tests/test_stress.py): unreadable
places delete nothing, no hangs on loops or special files, exact bytes for any file name, files that
change under the indexer, change detection, offline roots, read-only trees, OS junk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from clipsearch import Library, imaging
from clipsearch.errors import ImageError, LibraryError

from conftest import make_image
from reliability_helpers import FakeEncoder, db_rows, ok_paths

REPO = Path(__file__).resolve().parent.parent


def statuses(lib_dir: Path) -> dict[str, str]:
    return {os.fsdecode(p): s for p, s in db_rows(lib_dir, "SELECT path, status FROM files")}


def index(lib_dir, root, enc=None, **kw):
    with Library.open(lib_dir, encoder=enc or FakeEncoder(), **kw) as lib:
        return lib.index([root] if root is not None else None)


# -- 27 ---------------------------------------------------------------------------------------------------
def test_unreadable_file_and_directory_simulated(tmp_path, monkeypatch):
    """As root, permissions do not bite: simulate EACCES at the exact calls (the non-root run is below)."""
    root = tmp_path / "p"
    for i in range(4):
        make_image(root / "locked" / f"a{i}.png", i)
        make_image(root / "open" / f"b{i}.png", 10 + i)
    enc = FakeEncoder()
    index(tmp_path / "lib", root, enc)
    make_image(root / "open" / "new-secret.png", 99)
    (root / "open" / "b0.png").unlink()  # a real deletion: still not swept, the walk was incomplete
    locked, secret = os.fsencode(root / "locked"), os.fsencode(root / "open" / "new-secret.png")
    real_scandir, real_open = os.scandir, os.open

    def scandir(p):
        if os.fsencode(p) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", p)
        return real_scandir(p)

    def fake_open(p, *a, **k):
        if os.fsencode(p) == secret:
            raise PermissionError(errno.EACCES, "Permission denied", p)
        return real_open(p, *a, **k)

    monkeypatch.setattr(imaging.os, "scandir", scandir)
    monkeypatch.setattr(imaging.os, "open", fake_open)
    report = index(tmp_path / "lib", root, enc)
    monkeypatch.undo()
    assert [os.fsencode(s.path) for s in report.incomplete] == [locked]
    assert {s.path: s.reason for s in report.skipped} == {os.fsdecode(secret): "cannot open: Permission denied"}
    assert report.removed == 0
    st = statuses(tmp_path / "lib")
    assert all(st[str(root / "locked" / f"a{i}.png")] == "ok" for i in range(4))
    assert st[str(root / "open" / "b0.png")] == "ok"  # nothing swept under an incomplete walk
    report = index(tmp_path / "lib", root, enc)  # readable again: the deletion is applied now
    assert report.removed == 1


NONROOT_SCRIPT = r"""
import json, os, sys
from clipsearch import imaging
from clipsearch.errors import ImageError
errors = imaging.WalkErrors()
entries = list(imaging.walk(os.fsencode(sys.argv[1]), errors))
out = {"found": sorted(os.fsdecode(e.path) for e in entries), "incomplete": [os.fsdecode(p) for p, _ in errors.errors]}
out["read"] = {}
for e in entries:
    try:
        imaging.read_file(e)
        out["read"][os.fsdecode(e.path)] = "ok"
    except ImageError as err:
        out["read"][os.fsdecode(e.path)] = err.reason
print(json.dumps(out))
"""


def test_unreadable_file_and_directory_as_a_non_root_user(tmp_path_factory):
    # beside pytest's tmp dirs, not inside them: user 'nobody' must be able to enter every parent folder
    base = Path(tempfile.gettempdir()) / f"cs-nonroot-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    try:
        root = base / "p"
        make_image(root / "ok.png", 1)
        make_image(root / "secret.png", 2)
        make_image(root / "closed" / "c.png", 3)
        os.chmod(root / "secret.png", 0)
        os.chmod(root / "closed", 0)
        for d in (base, root):
            os.chmod(d, 0o755)
        os.chmod(root / "ok.png", 0o644)
        if os.geteuid() == 0:
            def drop():
                os.setgid(65534)
                os.setuid(65534)
            preexec = drop
        else:
            preexec = None
        env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(base))
        try:
            res = subprocess.run([sys.executable, "-c", NONROOT_SCRIPT, str(root)], capture_output=True, text=True,
                                 preexec_fn=preexec, env=env, cwd=str(base), timeout=120)
        except PermissionError as e:
            pytest.skip(f"tests run as root and user 'nobody' cannot execute {sys.executable} ({e.strerror}); "
                        f"test_unreadable_file_and_directory_simulated covers the behaviour")
        if res.returncode != 0 and "Permission denied" in res.stderr and "clipsearch" in res.stderr:
            pytest.skip(f"the unprivileged user cannot import clipsearch here: {res.stderr.splitlines()[-1]}")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["incomplete"] == [str(root / "closed")]
        assert out["read"][str(root / "ok.png")] == "ok"
        assert out["read"][str(root / "secret.png")] == "cannot open: Permission denied"
    finally:
        for p in (base / "p" / "closed", base / "p" / "secret.png"):
            if p.exists():
                os.chmod(p, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# -- 28 ---------------------------------------------------------------------------------------------------
def count_scans(monkeypatch) -> list[bytes]:
    """Record every folder the walk lists."""
    real, seen = imaging._scan, []

    def scan(d, errors):
        seen.append(d)
        return real(d, errors)

    monkeypatch.setattr(imaging, "_scan", scan)
    return seen


def test_symlink_loops_end_and_index_each_image_once(tmp_path, monkeypatch):
    root = tmp_path / "p"
    make_image(root / "a" / "b" / "x.png", 1)
    make_image(root / "y.png", 2)
    os.symlink(root, root / "a" / "b" / "up")  # dir -> ancestor
    os.symlink(root / "a", root / "a" / "b" / "up2")  # a second link to an ancestor
    os.symlink("self.jpg", root / "self.jpg")  # file self-loop
    os.symlink(tmp_path / "nowhere.png", root / "dangling.png")
    os.symlink(root / "y.png", root / "link-to-y.png")  # symlinked files are not followed either
    scans = count_scans(monkeypatch)
    report = index(tmp_path / "lib", root)
    assert sorted(scans) == sorted(os.fsencode(d) for d in (root, root / "a", root / "a" / "b"))  # each folder once
    assert report.added == 2 and not report.skipped and not report.incomplete
    assert ok_paths(tmp_path / "lib") == {os.fsencode(root / "a" / "b" / "x.png"), os.fsencode(root / "y.png")}


def test_follow_symlinks_visits_each_directory_and_file_once(tmp_path, monkeypatch):
    root = tmp_path / "p"
    make_image(root / "a" / "b" / "x.png", 1)
    make_image(root / "y.png", 2)
    make_image(tmp_path / "elsewhere" / "z.png", 3)
    os.symlink(root, root / "a" / "b" / "up")
    os.symlink(root / "a", root / "a" / "b" / "up2")
    os.symlink("self.jpg", root / "self.jpg")
    os.symlink(tmp_path / "nowhere.png", root / "dangling.png")
    os.symlink(root / "y.png", root / "0-link-to-y.png")  # sorts first: y is indexed once, under this name
    os.symlink(tmp_path / "elsewhere", root / "ext")  # a linked folder outside the root
    scans = count_scans(monkeypatch)
    report = index(tmp_path / "lib", root, follow_symlinks=True)
    # each folder once, under the first path the sorted walk reaches it by
    assert sorted(scans) == sorted(os.fsencode(d) for d in (root, root / "a", root / "a" / "b", root / "ext"))
    assert report.added == 3 and not report.skipped and not report.incomplete, report
    assert ok_paths(tmp_path / "lib") == {os.fsencode(p) for p in (
        root / "0-link-to-y.png", root / "a" / "b" / "x.png", root / "ext" / "z.png")}
    again = index(tmp_path / "lib", root, follow_symlinks=True)
    assert again.unchanged == 3 and again.removed == 0


# -- 29 ---------------------------------------------------------------------------------------------------
def test_special_files_with_image_names_never_block(tmp_path, monkeypatch):
    root = tmp_path / "p"
    make_image(root / "real.png", 1)
    os.mkfifo(root / "fifo.jpg")
    os.symlink("/dev/zero", root / "zero.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.jpg"))
    make_image(root / "dir.jpg" / "inside.png", 2)
    result = {}

    def run():
        result["report"] = index(tmp_path / "lib", root)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(60)
    sock.close()
    assert not th.is_alive(), "indexing hung on a special file"
    report = result["report"]
    assert report.added == 2 and not report.skipped
    # a FIFO that appears after the walk (a race): refused by fstat before any read, at once
    st = os.lstat(root / "real.png")
    entry = imaging.Entry(os.fsencode(root / "fifo.jpg"), st.st_size, st.st_mtime_ns, st.st_ino)
    def no_read(fd, n):
        raise AssertionError(f"read {n} bytes of a FIFO")

    monkeypatch.setattr(imaging.os, "read", no_read)
    with pytest.raises(ImageError, match="not a regular file"):
        imaging.read_file(entry)
    monkeypatch.undo()


# -- 30, 31 -----------------------------------------------------------------------------------------------
HOSTILE = [b"bad\xff\xfe.jpg", "new\nline.png".encode(), b"tab\there.png", b"quote'\"s.png", b"$(touch pwned).png",
           b"-leading-dash.png", b"100%.png", b"a_b.png", b"back\\slash.png", "'; DROP TABLE files;--.png".encode(),
           "caf\u00e9-\u65e5\u672c.png".encode()]


def run_cli_bytes(*args):
    env = dict(os.environ)
    env.pop("CLIPSEARCH_HOME", None)
    return subprocess.run([sys.executable, "-m", "clipsearch", *args], capture_output=True, env=env, timeout=300)


def test_non_utf8_and_hostile_names_round_trip(tmp_path, tiny_model):
    root = tmp_path / "p"
    root.mkdir()
    rb = os.fsencode(root)
    for i, name in enumerate(HOSTILE):
        make_image(Path(os.fsdecode(rb + b"/" + name)), 500 + i)
    lib = str(tmp_path / "lib")
    res = run_cli_bytes("index", str(root), "--library", lib, "--model", tiny_model, "-q", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["added"] == len(HOSTILE)
    want = {rb + b"/" + n for n in HOSTILE}
    assert ok_paths(Path(lib)) == want  # stored as the exact bytes
    assert not (Path.cwd() / "pwned").exists() and not (root / "pwned").exists()
    # JSON: valid, and every path round-trips through os.fsencode (\udcXX escapes for undecodable bytes)
    res = run_cli_bytes("query", "anything", "--library", lib, "-k", "100", "--json")
    assert res.returncode == 0, res.stderr
    got = [os.fsencode(r["path"]) for r in json.loads(res.stdout.decode("ascii"))]
    assert set(got) == want
    for p in got:
        assert open(p, "rb").read(4)  # a result opens the file
    # plain output: the raw bytes of each name, as the file system has them
    res = run_cli_bytes("query", "anything", "--library", lib, "-k", "100")
    assert res.returncode == 0
    for n in HOSTILE:
        assert rb + b"/" + n in res.stdout
    # -0: paths only, NUL-terminated, raw bytes: unambiguous even with newlines in names
    res = run_cli_bytes("query", "anything", "--library", lib, "-k", "100", "-0")
    assert res.returncode == 0 and res.stdout.endswith(b"\0")
    assert set(res.stdout[:-1].split(b"\0")) == want
    # the API gives str paths that are the same bytes
    with Library.open(lib, create=False) as opened:
        assert {os.fsencode(r.path) for r in opened.search("x", k=100)} == want


def test_prefix_siblings_are_never_swept_together(tmp_path):
    """Sweeping /p/a_b must not touch /p/aXb, /p/a%b, /p/a_b-2 or /p/a (byte ranges, not LIKE)."""
    names = ["a_b", "aXb", "a%b", "a_b-2", "a", "a_b0"]
    enc = FakeEncoder()
    for i, n in enumerate(names):
        make_image(tmp_path / n / "one.png", 40 + i)
        make_image(tmp_path / n / "two.png", 80 + i)
        index(tmp_path / "lib", tmp_path / n, enc)
    (tmp_path / "a_b" / "two.png").unlink()
    report = index(tmp_path / "lib", tmp_path / "a_b", enc)
    assert report.removed == 1
    st = statuses(tmp_path / "lib")
    assert st[str(tmp_path / "a_b" / "two.png")] == "deleted"
    assert [p for p, s in st.items() if s == "deleted"] == [str(tmp_path / "a_b" / "two.png")]


# -- 32 ---------------------------------------------------------------------------------------------------
def test_files_changing_during_indexing(tmp_path, monkeypatch):
    root = tmp_path / "p"
    for i in range(6):
        make_image(root / f"f{i}.png", 900 + i)
    enc = FakeEncoder()
    index(tmp_path / "lib", root, enc)
    make_image(root / "grows.png", 1)
    make_image(root / "goes.png", 2)
    make_image(root / "swapped.png", 3)
    make_image(tmp_path / "replacement.png", 4)
    make_image(root / "f0.png", 905)  # a known file, rewritten (mtime changes) and then appended to mid-read
    os.utime(root / "f0.png", ns=(5, 5))
    real_walk, real_read = imaging.walk, imaging.os.read
    targets = {os.fsencode(root / "grows.png"), os.fsencode(root / "f0.png")}

    def walk(*a, **k):
        for e in real_walk(*a, **k):
            if e.path.endswith(b"/goes.png"):
                os.unlink(e.path)  # deleted after the walk saw it
            if e.path.endswith(b"/swapped.png"):
                os.replace(tmp_path / "replacement.png", e.path)  # atomic-rename replacement
            yield e

    def slow_read(fd, n):
        data = real_read(fd, n)
        path = os.readlink(f"/proc/self/fd/{fd}").encode()
        if path in targets:
            targets.discard(path)
            with open(path, "ab") as f:
                f.write(b"more bytes")  # appended while being read
        return data

    monkeypatch.setattr("clipsearch.indexer.imaging.walk", walk)
    monkeypatch.setattr(imaging.os, "read", slow_read)
    report = index(tmp_path / "lib", root, enc)
    monkeypatch.undo()
    r = {Path(s.path).name: s.reason for s in report.skipped}
    assert r["goes.png"].startswith("vanished")
    assert "changed" in r["grows.png"] and "changed" in r["swapped.png"] and "changed" in r["f0.png"], r
    st = statuses(tmp_path / "lib")
    assert str(root / "goes.png") not in st and str(root / "grows.png") not in st  # nothing stale stored
    assert st[str(root / "f0.png")] == "ok"  # the old row stays until the next run
    old = dict(db_rows(tmp_path / "lib", "SELECT path, size FROM files"))
    assert old[os.fsencode(root / "f0.png")] != os.path.getsize(root / "f0.png")
    report = index(tmp_path / "lib", root, enc)  # the next run stores what is on disk now
    assert not report.skipped
    rows = {p: (size, h) for p, size, h in db_rows(tmp_path / "lib", "SELECT path, size, content_hash FROM files "
                                                                     "WHERE status='ok'")}
    for name in ("grows.png", "swapped.png", "f0.png"):
        p = root / name
        assert rows[os.fsencode(p)] == (p.stat().st_size, imaging.content_hash(p.read_bytes())), name


# -- 33 ---------------------------------------------------------------------------------------------------
def test_change_detection_edge_cases(tmp_path):
    root = tmp_path / "p"
    for i in range(4):
        make_image(root / f"c{i}.png", 1200 + i)
    enc = FakeEncoder()
    index(tmp_path / "lib", root, enc)
    # rename/move: the vector is reused, no model call, the old path tombstoned
    calls = enc.calls
    (root / "c0.png").rename(root / "moved.png")
    report = index(tmp_path / "lib", root, enc)
    assert enc.calls == calls and report.reused == 1 and report.removed == 1
    assert statuses(tmp_path / "lib")[str(root / "c0.png")] == "deleted"
    # the same content at two paths: two files, one embedding
    shutil.copy(root / "c1.png", root / "c1-copy.png")
    index(tmp_path / "lib", root, enc)
    rows = dict(db_rows(tmp_path / "lib", "SELECT path, embedding_id FROM files WHERE status='ok'"))
    assert rows[os.fsencode(root / "c1.png")] == rows[os.fsencode(root / "c1-copy.png")]
    # content edited in place with size and mtime preserved (`touch -r`): re-embedded
    from PIL import Image

    p = root / "c2.png"
    st = p.stat()
    data = p.read_bytes()
    other = tmp_path / "plain.png"
    Image.new("RGB", Image.open(p).size, (7, 99, 201)).save(other)  # one colour: a shorter PNG than c2's blocks
    new = other.read_bytes()
    assert len(new) < len(data)
    new += b"\0" * (len(data) - len(new))  # the same size: padded after IEND (Pillow ignores trailing bytes)
    with open(p, "r+b") as f:
        f.write(new)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (p.stat().st_size, p.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    before = dict(db_rows(tmp_path / "lib", "SELECT path, content_hash FROM files"))[os.fsencode(p)]
    calls = enc.calls
    index(tmp_path / "lib", root, enc)
    after = dict(db_rows(tmp_path / "lib", "SELECT path, content_hash FROM files"))[os.fsencode(p)]
    assert after != before and after == imaging.content_hash(p.read_bytes()) and enc.calls == calls + 1


def test_identical_first_megabyte_and_last_kilobyte_do_not_share_a_vector(tmp_path):
    from PIL import Image
    import numpy as np

    root = tmp_path / "p"
    root.mkdir()
    a = np.full((1000, 1200, 3), 120, np.uint8)
    b = a.copy()
    b[480:520] = 30  # differs only in the middle rows
    Image.fromarray(a).save(root / "a.bmp")
    Image.fromarray(b).save(root / "b.bmp")
    da, db = (root / "a.bmp").read_bytes(), (root / "b.bmp").read_bytes()
    assert len(da) == len(db) > 3_000_000 and da[:1 << 20] == db[:1 << 20] and da[-1024:] == db[-1024:]
    index(tmp_path / "lib", root)
    rows = db_rows(tmp_path / "lib", "SELECT embedding_id, content_hash FROM files WHERE status='ok'")
    assert len({e for e, _ in rows}) == 2 and len({h for _, h in rows}) == 2


# -- 34 ---------------------------------------------------------------------------------------------------
def test_offline_root_deletes_nothing_and_comes_back_without_reembedding(tmp_path):
    disk = tmp_path / "usb"
    other = tmp_path / "home"
    for i in range(5):
        make_image(disk / f"u{i}.png", 1300 + i)
        make_image(other / f"h{i}.png", 1400 + i)
    enc = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=enc) as lib:
        lib.index([disk])
        lib.index([other])
    # unplugged: the mount point is gone
    disk.rename(tmp_path / "usb-away")
    with Library.open(tmp_path / "lib", encoder=enc) as lib:
        report = lib.index()  # every known root
        assert report.removed == 0
        assert any(s.path == str(disk) and "root unavailable" in s.reason for s in report.incomplete)
        with pytest.raises(LibraryError, match="root unavailable"):
            lib.index([disk])
    assert all(statuses(tmp_path / "lib")[str(disk / f"u{i}.png")] == "ok" for i in range(5))
    # an empty mount point (the disk is not mounted there): also nothing deleted
    disk.mkdir()
    with Library.open(tmp_path / "lib", encoder=enc) as lib:
        report = lib.index([disk])
        assert report.removed == 0 and any("not mounted" in s.reason for s in report.incomplete)
    disk.rmdir()
    # back again: unchanged, no model call
    (tmp_path / "usb-away").rename(disk)
    calls = enc.calls
    with Library.open(tmp_path / "lib", encoder=enc) as lib:
        report = lib.index()
        assert report.unchanged == 10 and report.embedded == 0 and enc.calls == calls
        assert lib.status()["images"] == 10


# -- 36 ---------------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
    st = os.lstat(root)
    out[str(root)] = (st.st_ino, st.st_mtime_ns)
    return out


def test_read_only_tree_is_never_written(tmp_path):
    root = tmp_path / "p"
    for i in range(5):
        make_image(root / "sub" / f"r{i}.png", 1500 + i)
    (root / "sub" / "bad.png").write_bytes(b"nope")
    for p in [root, root / "sub", *root.rglob("*.png")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    before = snapshot(root)
    try:
        report = index(tmp_path / "lib", root)
        report2 = index(tmp_path / "lib", root)
        after = snapshot(root)
    finally:
        for p in [root, root / "sub"]:
            os.chmod(p, 0o755)
    assert report.added == 5 and len(report.skipped) == 1 and report2.unchanged == 6
    assert after == before  # no new inode, nothing touched


# -- 37 ---------------------------------------------------------------------------------------------------
def test_os_junk_is_skipped_quietly(tmp_path):
    root = tmp_path / "p"
    make_image(root / "IMG_1234.JPG", 1, fmt="JPEG")
    make_image(root / "._IMG_1234.JPG", 2, fmt="JPEG")  # AppleDouble
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    make_image(root / "@eaDir" / "IMG_1234.JPG" / "SYNOPHOTO_THUMB_XL.jpg", 3, fmt="JPEG")
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    make_image(root / ".Trashes" / "501" / "old.jpg", 4, fmt="JPEG")
    make_image(root / "$RECYCLE.BIN" / "S-1-5" / "gone.jpg", 5, fmt="JPEG")
    report = index(tmp_path / "lib", root)
    assert report.added == 1 and not report.skipped and not report.incomplete
    assert ok_paths(tmp_path / "lib") == {os.fsencode(root / "IMG_1234.JPG")}
