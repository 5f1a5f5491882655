"""The query side (reliability.md section Q, cases 38-44): refused before the model loads when the query
cannot be one, specific messages for example images, k validated, model and schema mismatches refused,
and a file that is not a clipsearch library is never written."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch import Library
from clipsearch.store import SCHEMA_HEAD
from clipsearch.cli import cli
from clipsearch.errors import (ConfigError, EmptyLibraryError, ImageError, LibraryError, ModelMismatchError)

from conftest import make_image, run_cli, write_checkpoint
from reliability_helpers import FakeEncoder, db_rows

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("q")
    root = tmp / "photos"
    for i in range(8):
        make_image(root / f"q{i}.png", 2000 + i)
    with Library.open(tmp / "lib", model=tiny_model) as lib:
        lib.index([root])
    return tmp / "lib", root


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- 38 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_query_is_a_usage_error_without_loading_the_model(built, monkeypatch, text):
    lib_dir, _ = built

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("clipsearch.encoders.load_encoder", no_model)
    monkeypatch.setattr("clipsearch.library.Library.text_encoder", no_model, raising=False)
    res = CliRunner().invoke(cli, ["query", text, "--library", str(lib_dir)])
    assert res.exit_code == 2 and "query is empty" in res.output


# -- 39 ---------------------------------------------------------------------------------------------------
def test_long_query_warns_and_huge_query_is_refused(built, caplog):
    lib_dir, _ = built
    with Library.open(lib_dir, create=False) as lib:
        with caplog.at_level(logging.WARNING, logger="clipsearch.library"):
            results = lib.search(" ".join(["a photo of a red circle on a green square"] * 5), k=3)
        assert len(results) == 3
        assert any("query truncated to the first" in r.message for r in caplog.records), \
            f"no truncation warning (text encoder {type(lib.text_encoder()).__name__})"
        with pytest.raises(ConfigError, match="limit"):
            lib.search("x" * 1_000_000, k=3)


# -- 40 ---------------------------------------------------------------------------------------------------
def test_any_unicode_query_is_deterministic_and_nul_is_refused(built):
    lib_dir, _ = built
    texts = ["una foto de un perro", "\u72ac\u306e\u5199\u771f", "\U0001F436\U0001F3D6\ufe0f", "\u05db\u05dc\u05d1 \u0628\u0627\u0644\u0634\u0627\u0637\u0626",
             "e\u0301e\u0301 cafe\u0301", "tab\tand\x07bell\x1b[31m", "\u200b\u200d zero width"]
    with Library.open(lib_dir, create=False) as lib:
        for t in texts:
            a = [(r.path, round(r.score, 6)) for r in lib.search(t, k=5)]
            b = [(r.path, round(r.score, 6)) for r in lib.search(t, k=5)]
            assert a == b and len(a) == 5, t
        with pytest.raises(ConfigError, match="NUL"):
            lib.search("dog\x00cat", k=3)


# -- 41 ---------------------------------------------------------------------------------------------------
def test_example_image_queries_get_specific_messages(built, tmp_path, monkeypatch):
    lib_dir, root = built
    (tmp_path / "notimg.jpg").write_text("text")
    (tmp_path / "d.jpg").mkdir()
    os.mkfifo(tmp_path / "fifo.jpg")
    from test_reliability_inputs import png_header_only

    (tmp_path / "bomb.png").write_bytes(png_header_only(20000, 20000))
    (tmp_path / "x.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100))
    make_image(tmp_path / "secret.png", 1)
    cases = {
        "missing.jpg": "No such file",
        "d.jpg": "not a regular file",
        "fifo.jpg": "not a regular file",
        "notimg.jpg": "not a readable image",
        "bomb.png": "too large",
        "x.heic": "HEIC/HEIF support not installed",
    }
    with Library.open(lib_dir, create=False) as lib:
        for name, msg in cases.items():  # the FIFO is never opened for reading (that would block)
            with pytest.raises(ImageError) as e:
                lib.search(image=tmp_path / name, k=3)
            assert msg in str(e.value) and name in str(e.value), (name, str(e.value))
        os.symlink(root / "q3.png", tmp_path / "link.png")  # a symlink the user names is followed
        top = lib.search(image=tmp_path / "link.png", k=1)[0]
        assert top.path == str(root / "q3.png") and top.score > 0.999
        import errno

        real_open = os.open

        def denied(p, *a, **k):
            if os.fsdecode(p).endswith("secret.png"):
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_open(p, *a, **k)

        monkeypatch.setattr("clipsearch.imaging.os.open", denied)
        with pytest.raises(ImageError, match="Permission denied"):
            lib.search(image=tmp_path / "secret.png", k=3)


# -- 42 ---------------------------------------------------------------------------------------------------
def test_k_validation_and_small_libraries(built, tmp_path, tiny_model):
    lib_dir, _ = built
    runner = CliRunner()
    for k in ("0", "-3"):
        res = runner.invoke(cli, ["query", "x", "-k", k, "--library", str(lib_dir)])
        assert res.exit_code == 2 and "k must be at least 1" in res.output, res.output
    res = runner.invoke(cli, ["query", "x", "-k", "two", "--library", str(lib_dir)])
    assert res.exit_code == 2 and "two" in res.output
    with Library.open(lib_dir, create=False) as lib:
        for k in (0, -1, 1.5, True, "3"):
            with pytest.raises(ConfigError, match="k must be"):
                lib.search("x", k=k)
        results = lib.search("x", k=1000)
        assert len(results) == 8 and all(r.embedding_id >= 0 for r in results)
        assert len({r.path for r in results}) == 8
    empty = tmp_path / "empty"
    empty.mkdir()
    with Library.open(tmp_path / "elib", model=tiny_model) as lib:
        lib.index([empty])
        with pytest.raises(EmptyLibraryError, match="clipsearch index"):
            lib.search("x", k=3)


# -- 43 ---------------------------------------------------------------------------------------------------
def test_model_mismatch_dim_weights_and_preprocessing(tmp_path):
    root = tmp_path / "p"
    for i in range(3):
        make_image(root / f"m{i}.png", 3000 + i)
    model = write_checkpoint(tmp_path / "model")
    with Library.open(tmp_path / "lib", model=str(model)) as lib:
        lib.index([root])
    cfg_path = model / "open_clip_config.json"
    original = cfg_path.read_text()
    weights = (model / "open_clip_model.safetensors").read_bytes()

    def refused(expect):
        # a new file, so that the run needs the model (an unchanged folder is re-indexed without loading it)
        make_image(root / f"new-{len(list(root.iterdir()))}.png", 4000 + len(list(root.iterdir())))
        with Library.open(tmp_path / "lib", create=False) as lib:
            with pytest.raises(ModelMismatchError) as e:
                lib.index([root])
        assert expect in str(e.value), str(e.value)
        return str(e.value)

    # the same path, other weights of the same dimension
    write_checkpoint(tmp_path / "other", seed=7)
    shutil.copy(tmp_path / "other" / "open_clip_model.safetensors", model / "open_clip_model.safetensors")
    msg = refused("weights")
    assert msg.count("dim 32") == 2  # both fingerprints shown
    (model / "open_clip_model.safetensors").write_bytes(weights)
    # a changed preprocessing configuration
    cfg = json.loads(original)
    cfg["preprocess_cfg"]["mean"] = [0.5, 0.5, 0.5]
    cfg_path.write_text(json.dumps(cfg))
    refused("was built with model")
    cfg_path.write_text(original)
    # another dimension
    cfg = json.loads(original)
    wide = dict(cfg["model_cfg"], embed_dim=24)
    write_checkpoint(tmp_path / "wide", model_cfg=wide)
    with Library.open(tmp_path / "lib", create=False) as lib:
        assert lib.index([root]).unchanged == 3  # the original is accepted again (and indexes the new files)
    with pytest.raises(ModelMismatchError, match="cannot be used with"):
        Library.open(tmp_path / "lib", model=str(tmp_path / "wide"))
    shutil.rmtree(model)
    shutil.copytree(tmp_path / "wide", model)
    refused("dim 24")


# -- 44 ---------------------------------------------------------------------------------------------------
def make_schema_0001(tmp_path: Path) -> Path:
    """A library as schema 0001 wrote it (the golden shape: no files.ctime_ns), with vectors."""
    root = tmp_path / "p"
    for i in range(5):
        make_image(root / f"s{i}.png", 4000 + i)
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir, encoder=FakeEncoder()) as lib:
        lib.index([root])
    con = sqlite3.connect(lib_dir / "library.db")
    con.execute("ALTER TABLE files DROP COLUMN ctime_ns")
    for index in ("ix_files_taken_at", "ix_files_mtime_ns", "ix_files_format", "ix_files_pixels"):  # schema 0003
        con.execute(f"DROP INDEX {index}")
    for column in ("taken_at", "format", "meta_version"):
        con.execute(f"ALTER TABLE files DROP COLUMN {column}")
    con.execute("DROP TABLE tags")  # schema 0004
    con.execute("UPDATE alembic_version SET version_num='0001'")
    con.commit()
    con.close()
    return lib_dir


def test_migrating_an_old_schema_keeps_everything_and_snapshots_first(tmp_path):
    lib_dir = make_schema_0001(tmp_path)
    before = db_rows(lib_dir, "SELECT f.path, f.status, e.vector FROM files f JOIN embeddings e ON e.id=f.embedding_id "
                              "ORDER BY f.path")
    with Library.open(lib_dir, encoder=FakeEncoder()) as lib:
        assert lib.check().ok
        report = lib.index([tmp_path / "p"])
        assert report.unchanged == 5 and report.embedded == 0
    assert db_rows(lib_dir, "SELECT version_num FROM alembic_version") == [(SCHEMA_HEAD,)]
    after = db_rows(lib_dir, "SELECT f.path, f.status, e.vector FROM files f JOIN embeddings e ON e.id=f.embedding_id "
                             "ORDER BY f.path")
    assert after == before
    snap = lib_dir / "library.db.schema-0001.bak"
    assert snap.exists()
    con = sqlite3.connect(snap)
    assert con.execute("SELECT version_num FROM alembic_version").fetchone() == ("0001",)
    assert con.execute("SELECT count(*) FROM files").fetchone() == (5,)
    con.close()


def test_crash_and_exception_mid_migration_leave_the_old_schema(tmp_path, monkeypatch):
    lib_dir = make_schema_0001(tmp_path)
    env = dict(os.environ, CLIPSEARCH_CRASH_AT="mid_migration")
    env.pop("CLIPSEARCH_HOME", None)
    res = subprocess.run([sys.executable, "-m", "clipsearch", "status", "--library", str(lib_dir)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL
    con = sqlite3.connect(lib_dir / "library.db")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT version_num FROM alembic_version").fetchone() == ("0001",)
    assert "ctime_ns" not in {r[1] for r in con.execute("PRAGMA table_info(files)")}
    con.close()
    # an exception at the same place: rolled back whole too
    from clipsearch import _crashpoints

    def boom(name, **info):
        if name == "mid_migration":
            raise RuntimeError("injected failure inside the migration")

    monkeypatch.setattr(_crashpoints, "ACTIVE", True)
    monkeypatch.setattr(_crashpoints, "hit", boom)
    with pytest.raises(RuntimeError, match="injected failure inside the migration"):
        Library.open(lib_dir, create=False)
    monkeypatch.undo()
    assert db_rows(lib_dir, "SELECT version_num FROM alembic_version") == [("0001",)]
    assert "ctime_ns" not in {r[1] for r in db_rows(lib_dir, "PRAGMA table_info(files)")}
    with Library.open(lib_dir, create=False) as lib:  # and then it migrates
        assert lib.check().ok and lib.status()["images"] == 5
    assert db_rows(lib_dir, "SELECT version_num FROM alembic_version") == [(SCHEMA_HEAD,)]


def test_newer_schema_is_refused_untouched(tmp_path):
    lib_dir = make_schema_0001(tmp_path)
    con = sqlite3.connect(lib_dir / "library.db")
    con.execute("UPDATE alembic_version SET version_num='0099'")
    con.commit()
    con.close()
    before = sha(lib_dir / "library.db")
    res = run_cli("status", "--library", str(lib_dir))
    assert res.returncode == 1 and "upgrade clipsearch" in res.stderr and "Traceback" not in res.stderr
    assert sha(lib_dir / "library.db") == before


@pytest.mark.parametrize("kind", ["other-app", "plain-sqlite", "random", "text", "truncated"])
def test_a_file_that_is_not_a_library_is_never_overwritten(tmp_path, kind):
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    db = lib_dir / "library.db"
    if kind == "other-app":
        con = sqlite3.connect(db)
        con.execute("PRAGMA application_id=1234")
        con.execute("CREATE TABLE t(x)")
        con.commit()
        con.close()
    elif kind == "plain-sqlite":
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE notes(x)")
        con.execute("INSERT INTO notes VALUES ('precious')")
        con.commit()
        con.close()
    elif kind == "random":
        db.write_bytes(os.urandom(50_000))
    elif kind == "text":
        db.write_text("my shopping list\n")
    else:
        src = make_schema_0001(tmp_path / "src")
        with Library.open(src, encoder=FakeEncoder()):
            pass
        data = (src / "library.db").read_bytes()
        db.write_bytes(data[: len(data) // 2])
    before = sha(db)
    for args in (["status"], ["check"], ["query", "x"]):
        res = run_cli(*args, "--library", str(lib_dir))
        assert res.returncode != 0 and "Traceback" not in res.stderr, (kind, args, res.stderr)
        assert res.stderr.startswith("Error:") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    with pytest.raises(LibraryError):
        Library.open(lib_dir, encoder=FakeEncoder())
    assert sha(db) == before
    extra = sorted(p.name for p in lib_dir.iterdir() if p.name != "library.db")
    # a WAL-mode header makes SQLite's reader create its (empty) sidecar files; nothing else is written
    assert extra in ([], ["library.db-shm", "library.db-wal"]), extra
    if extra:
        assert (lib_dir / "library.db-wal").stat().st_size == 0
