"""`index` loads the model only when a file's content is new: re-indexing an unchanged folder, sweeping deleted
files and reusing the vectors of renamed files never load it; the first new file loads it once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from clipsearch import Library
from clipsearch.errors import ModelUnavailableError
from clipsearch.indexer import Indexer
from clipsearch.store import Catalog

from conftest import make_image
from reliability_helpers import FakeEncoder, db_rows

WAIT = 60  # seconds: only a hang (a bug) waits this long


@pytest.fixture
def count_loads(monkeypatch):
    """Count Library's loads of the model (clipsearch.encoders.load_encoder), still loading it for real."""
    import clipsearch.encoders as encoders

    real = encoders.load_encoder
    calls = []

    def load_encoder(name, **kw):
        calls.append(name)
        return real(name, **kw)

    monkeypatch.setattr(encoders, "load_encoder", load_encoder)
    return calls


def test_reindex_unchanged_deleted_renamed_does_not_load_the_model(tmp_path, photos, tiny_model, count_loads):
    with Library.open(tmp_path / "lib", model=tiny_model) as lib:
        assert lib.index([photos]).embedded == 10
    assert count_loads == [tiny_model]
    del count_loads[:]

    events = []
    with Library.open(tmp_path / "lib") as lib:
        report = lib.index([photos], on_progress=lambda kind, n: events.append(kind))
        assert (report.unchanged, report.embedded) == (10, 0)
        (photos / "img1.png").unlink()
        (photos / "img2.png").rename(photos / "renamed.png")  # known content: its vector is reused
        report = lib.index([photos])
        assert (report.removed, report.added, report.reused, report.embedded) == (2, 1, 1, 0)
        assert count_loads == [] and "loading-model" not in events
        # the cache was published without the model, and search sees the new state
        assert len(lib.search(image=photos / "renamed.png", k=20)) == 9

        make_image(photos / "new.png", 999)
        report = lib.index([photos], on_progress=lambda kind, n: events.append(kind))
        assert report.embedded == 1
    assert count_loads == [tiny_model] and events.count("loading-model") == 1


def test_a_new_library_over_an_empty_folder_loads_nothing(tmp_path, count_loads):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image name: not read")
    with Library.open(tmp_path / "lib", model="shapes") as lib:
        report = lib.index([empty])
        assert (report.added, report.embedded, report.skipped) == (0, 0, [])
        assert lib.dim is None and not (lib.path / "index.faiss").exists()  # no model: no dimension, no cache yet
    assert count_loads == []


def test_the_model_is_loaded_once_in_the_main_thread(tmp_path):
    """Four decode threads meet new content before the model is loaded: they hand it back undecoded, and the
    main thread loads the model once (so a Ctrl-C can stop a slow download) and has it all decoded."""
    root = tmp_path / "photos"
    for i in range(12):
        make_image(root / f"{i:02d}.png", 700 + i)
    loads, events = [], []
    enc = FakeEncoder()

    def loader():
        loads.append(threading.current_thread() is threading.main_thread())
        return enc

    catalog = Catalog.open(tmp_path / "library.db")
    try:
        ix = Indexer(catalog, loader, batch_size=4, workers=4, on_progress=lambda kind, n: events.append((kind, n)))
        report = ix.run([root])
    finally:
        catalog.close()
    assert report.embedded == 12 and report.added == 12 and not report.skipped
    assert loads == [True] and events.count(("loading-model", 0)) == 1
    first_done = next(i for i, (kind, n) in enumerate(events) if kind == "done" and n > 0)
    assert events.index(("loading-model", 0)) < first_done  # said before anything was embedded
    assert enc.images == 12  # every picture embedded once


def test_a_model_that_cannot_be_loaded_stops_the_run_and_is_not_a_file_failure(tmp_path, photos):
    """The load's error is the run's error (not ten 'failed' files), and a failed load is not retried per file."""
    loads = []

    def loader():
        loads.append(1)
        raise ModelUnavailableError("model weights are not available offline")

    catalog = Catalog.open(tmp_path / "library.db")
    try:
        with pytest.raises(ModelUnavailableError, match="not available offline"):
            Indexer(catalog, loader, batch_size=4, workers=3).run([photos])
    finally:
        catalog.close()
    assert loads == [1]
    assert db_rows(tmp_path, "SELECT count(*) FROM files")[0][0] == 0


CLI_RUN = """
import sys
from clipsearch.cli import main
sys.argv = ["clipsearch"] + sys.argv[1:]
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("TORCH-IMPORTED" if "torch" in sys.modules else "TORCH-NOT-IMPORTED", file=sys.stderr)
sys.exit(code)
"""


def cli(*args, env=None):
    full = dict(os.environ, **(env or {}))
    full.pop("CLIPSEARCH_HOME", None)
    return subprocess.run([sys.executable, "-c", CLI_RUN, *args], capture_output=True, text=True, env=full,
                          timeout=600)


def test_cli_reindex_of_unchanged_files_never_imports_torch(tmp_path, tiny_model):
    root = tmp_path / "photos"
    for i in range(30):
        make_image(root / f"{i:02d}.png", 800 + i, size=(16, 16))
    lib = str(tmp_path / "lib")
    first = cli("index", str(root), "--library", lib, "--model", tiny_model)
    assert first.returncode == 0, first.stderr
    assert f"loading model {tiny_model}\n" in first.stderr and "TORCH-IMPORTED" in first.stderr
    again = cli("index", str(root), "--library", lib)
    assert again.returncode == 0, again.stderr
    assert "unchanged 30" in again.stderr
    assert "loading model" not in again.stderr and "TORCH-NOT-IMPORTED" in again.stderr
    # -q: the model loads for the new file, silently
    make_image(root / "new.png", 900)
    quiet = cli("index", str(root), "--library", lib, "-q")
    assert quiet.returncode == 0 and "added 1" in quiet.stderr and "TORCH-IMPORTED" in quiet.stderr
    assert "loading model" not in quiet.stderr


def test_has_embedding_from_many_threads(tmp_path):
    """Catalog.has_embedding answers from several threads at once (a connection per call) while another
    connection commits."""
    import numpy as np

    from clipsearch.store import Record

    catalog = Catalog.open(tmp_path / "library.db")
    try:
        v = np.zeros(4, np.float32)
        v[0] = 1
        catalog.commit_batch([Record(path=b"/a", size=1, mtime_ns=1, ino=1, content_hash="known", vector=v)],
                             root_id=None, scan=1)
        start = threading.Barrier(9)
        answers: list[tuple[bool, bool]] = []

        def ask():
            start.wait(WAIT)
            for _ in range(40):
                answers.append((catalog.has_embedding("known"), catalog.has_embedding("unknown")))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        start.wait(WAIT)
        for i in range(10):  # writes in between
            catalog.commit_batch([Record(path=f"/b{i}".encode(), size=1, mtime_ns=1, ino=1, content_hash=f"h{i}",
                                         vector=v)], root_id=None, scan=1)
        for t in threads:
            t.join(WAIT)
        assert answers == [(True, False)] * 320
        assert catalog.has_embedding("h9")
    finally:
        catalog.close()


def test_a_failing_database_in_a_decode_thread_stops_the_run(tmp_path, photos, monkeypatch):
    """The catalog lookup in the decode threads is not the file's fault: its error is the run's (one clear
    LibraryError), not ten files recorded as failed."""
    import sqlalchemy as sa

    from clipsearch.errors import LibraryError

    def broken(self, content_hash):
        raise sa.exc.OperationalError("SELECT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(Catalog, "has_embedding", broken)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        with pytest.raises(LibraryError, match="disk I/O error"):
            lib.index([photos])
    assert db_rows(tmp_path / "lib", "SELECT count(*) FROM files")[0][0] == 0
