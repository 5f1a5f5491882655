"""How the indexer cuts the walk into batches, with the decode threads' timing forced by the test.

Every worker call waits on its own gate. A scripted pool decides when each gate opens: at submit, with
the submit waiting until the item is done ("instant"), or only when the indexer blocks on that item's
result ("slow", a decode that always lags behind). So which items are done at every check the indexer
makes is fixed by the script, never by thread timing. Batch sizes are read back from the catalog (one
seq per committed batch) and from the commit calls.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from clipsearch import Library, indexer
from clipsearch.store import Catalog

from conftest import make_image
from reliability_helpers import FakeEncoder, db_rows

WAIT = 60  # seconds: only a hang (a bug) ever waits this long


class Script:
    """The decode timing of one run: `instant(i)` says whether the i-th submitted item is done at once."""

    def __init__(self, instant):
        self.instant = instant
        self.gates: dict[bytes, threading.Event] = {}
        self.submitted = 0
        self.taken = 0  # results the indexer has asked for
        self.max_queued = 0  # most submitted items not yet taken into a batch
        self.commits: list[tuple[int, int]] = []  # (batch size, items submitted when it was committed)
        self.redecoded: list[bytes] = []  # items decoded again after the model was loaded
        self.lock = threading.Lock()

    def gate(self, path: bytes) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(path, threading.Event())


class Handle:
    """What the scripted pool returns: a slow item's gate opens when its result is asked for."""

    def __init__(self, script: Script, future, gate: threading.Event):
        self.script, self.future, self.gate = script, future, gate

    def done(self) -> bool:
        return self.future.done()

    def exception(self):
        return self.future.exception(timeout=WAIT)

    def result(self):
        self.script.taken += 1
        self.gate.set()
        return self.future.result(timeout=WAIT)


def scripted_pool(script: Script):
    class ScriptedPool(ThreadPoolExecutor):
        def __init__(self, workers, **kw):
            # enough threads that items held at their gates never starve an item the script lets through;
            # the indexer's own `workers` still sets its read-ahead
            super().__init__(64, **kw)

        def submit(self, fn, item):
            if getattr(fn, "__name__", "") != "prepare":  # content read before the model was loaded, sent back
                script.redecoded.append(item.entry.path)
                return super().submit(fn, item)
            gate = script.gate(item.entry.path)
            future = super().submit(fn, item)
            i = script.submitted
            script.submitted += 1
            script.max_queued = max(script.max_queued, script.submitted - script.taken)
            if script.instant(i):
                gate.set()
                done, _ = concurrent.futures.wait([future], timeout=WAIT)
                assert done, "an instant item did not finish"
            return Handle(script, future, gate)

    return ScriptedPool


@pytest.fixture
def run(tmp_path, monkeypatch):
    """run(n, batch_size, workers, instant) -> the Script, after indexing n new images; the model is loaded
    before the run unless preload=False (then the first new content loads it)."""
    real_prepare = indexer.Indexer._prepare
    real_commit = Catalog.commit_batch
    real_run = indexer.Indexer.run

    def go(n: int, batch_size: int, workers: int, instant, preload: bool = True):
        script = Script(instant)

        def run_(self, roots):
            if preload:
                self.encoder()
            return real_run(self, roots)

        monkeypatch.setattr(indexer.Indexer, "run", run_)

        def prepare(self, item):
            assert script.gate(item.entry.path).wait(WAIT), "a gate never opened"
            return real_prepare(self, item)

        def commit_batch(self, records, **kw):
            script.commits.append((len(records), script.submitted))
            return real_commit(self, records, **kw)

        monkeypatch.setattr(indexer.Indexer, "_prepare", prepare)
        monkeypatch.setattr(indexer, "ThreadPoolExecutor", scripted_pool(script))
        monkeypatch.setattr(Catalog, "commit_batch", commit_batch)
        root = tmp_path / f"photos-{n}-{batch_size}-{workers}-{preload}"
        for i in range(n):
            make_image(root / f"{i:03d}.png", 500 + i, size=(8, 8))
        lib_dir = tmp_path / f"lib-{n}-{batch_size}-{workers}-{preload}"
        with Library.open(lib_dir, encoder=FakeEncoder(), batch_size=batch_size, workers=workers) as lib:
            report = lib.index([root])
        assert report.added == n and report.embedded == n and not report.skipped
        # the catalog agrees: one seq per batch, batches in walk order
        rows = db_rows(lib_dir, "SELECT path, seq FROM files WHERE status='ok' ORDER BY path")
        assert len(rows) == n
        seqs = [seq for _, seq in rows]
        assert seqs == sorted(seqs)
        sizes = [seqs.count(s) for s in sorted(set(seqs))]
        assert sizes == [size for size, _ in script.commits]
        assert report.batches == len(script.commits)
        if preload:
            assert script.redecoded == []
        script.vectors = dict(db_rows(lib_dir, "SELECT f.path, e.vector FROM files f JOIN embeddings e "
                                               "ON e.id = f.embedding_id"))
        script.root = root
        script.sizes = sizes
        script.n, script.batch_size, script.workers = n, batch_size, workers
        return script

    return go


def full_batches(n: int, batch_size: int) -> list[int]:
    return [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])


def check_overlap(script: Script) -> None:
    """A full batch is committed only once the next one is queued (or the walk has ended)."""
    done = 0
    for size, submitted in script.commits:
        done += size
        assert submitted >= min(script.n, done + script.batch_size), script.commits


def read_ahead(script: Script) -> int:
    return 2 * script.batch_size + script.workers


@pytest.mark.parametrize("n,batch_size,workers", [(10, 3, 2), (9, 3, 2), (11, 4, 1), (7, 2, 3), (30, 4, 2)])
def test_every_worker_instant(run, n, batch_size, workers):
    """Every item is done before the indexer looks: full batches pile up and are held back until the next
    batch is queued, and the walk ends while one is held (the case that committed batch_size + 1)."""
    script = run(n, batch_size, workers, instant=lambda i: True)
    assert script.sizes == full_batches(n, batch_size)
    check_overlap(script)
    assert script.max_queued <= read_ahead(script)


@pytest.mark.parametrize("n,batch_size,workers", [(10, 3, 2), (5, 3, 2), (30, 4, 2), (12, 3, 1)])
def test_every_worker_slow(run, n, batch_size, workers):
    """No item is done until the indexer waits for it: it reads ahead exactly two batches plus one item per
    worker, then takes one item for each one it submits."""
    script = run(n, batch_size, workers, instant=lambda i: False)
    assert script.sizes == full_batches(n, batch_size)
    check_overlap(script)
    assert script.max_queued == min(n, read_ahead(script))


def test_first_item_slow_then_instant(run):
    """The oldest item lags while the rest are done: the indexer waits for it only once the read-ahead is full,
    and commits in walk order."""
    script = run(20, 3, 2, instant=lambda i: i != 0)
    assert script.sizes == full_batches(20, 3)
    check_overlap(script)
    assert script.max_queued == read_ahead(script)


@pytest.mark.parametrize("instant", [True, False], ids=["instant", "slow"])
def test_batch_size_one(run, instant):
    script = run(5, 1, 2, instant=lambda i: instant)
    assert script.sizes == [1] * 5
    check_overlap(script)
    assert script.max_queued <= read_ahead(script)


def test_walk_ends_while_a_full_batch_is_held_back(run):
    """10 instant items in batches of 3: at the end of the walk [6, 7, 8] is full and held back (the next batch
    is not queued yet) and 9 is done. The old drain loop appended 9 to it: batches 3, 3, 4."""
    script = run(10, 3, 2, instant=lambda i: True)
    assert script.commits[:2] == [(3, 6), (3, 9)]  # each committed once the next batch was queued
    assert script.commits[2:] == [(3, 10), (1, 10)]  # after the walk: the held batch alone, then the rest


def test_content_read_before_the_model_loads_is_decoded_after(run):
    """Items 1-7 are read while item 0 (slow) holds the model's first load back: they come back undecoded,
    and once the main thread has loaded the model (taking item 0) they go to the workers again. The vectors
    are those of a run whose model was loaded first."""
    script = run(20, 3, 2, instant=lambda i: i != 0, preload=False)
    assert script.sizes == full_batches(20, 3)
    assert sorted(script.redecoded) == sorted(os.fsencode(script.root / f"{i:03d}.png") for i in range(1, 8))
    reference = run(20, 3, 2, instant=lambda i: True)
    assert [v for _, v in sorted(script.vectors.items(), key=lambda kv: os.path.basename(kv[0]))] == \
        [v for _, v in sorted(reference.vectors.items(), key=lambda kv: os.path.basename(kv[0]))]
