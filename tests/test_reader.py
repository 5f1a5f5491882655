"""The shared read path: one Reader, many threads, while another process indexes into the library."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import make_image, run_cli

from clipsearch import Query, Reader, Term
from clipsearch.errors import ConfigError, NotFoundError


def _folder(root, start, n):
    for i in range(start, start + n):
        make_image(root / f"r{i:03d}.png", 500 + i)
    return root


def test_threads_share_one_reader_while_another_process_indexes(tmp_path, tiny_model, monkeypatch):
    lib = tmp_path / "lib"
    first = _folder(tmp_path / "first", 0, 12)
    run_cli("index", str(first), "--library", str(lib), "--model", tiny_model, "-q", check=True)

    from clipsearch import identity

    loads = []
    real = identity.load_light_text_encoder
    monkeypatch.setattr(identity, "load_light_text_encoder", lambda *a: loads.append(1) or real(*a))
    reader = Reader.open(lib)
    assert len(reader.search("a probe", k=100)) == 12

    second = _folder(tmp_path / "second", 100, 40)
    child = subprocess.Popen([sys.executable, "-m", "clipsearch", "index", str(second), "--library", str(lib),
                              "-q", "--batch-size", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors: list[BaseException] = []
    sizes: list[int] = []
    stop = threading.Event()
    known = {str(p) for p in first.iterdir()} | {str(p) for p in second.iterdir()}

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                text = ["a red circle", "a probe", "two blue squares"][int(rng.integers(3))]
                res = reader.search(Query.text(text, k=200, cutoff="none"))  # a random model: no cut-off
                scores = [r.score for r in res]
                assert scores == sorted(scores, reverse=True)
                assert {r.path for r in res} <= known
                assert len({r.path for r in res}) == len(res)
                sizes.append(len(res))
        except BaseException as e:  # surfaced below, with its traceback
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        _, err = child.communicate(timeout=300)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert child.returncode == 0, err.decode()
    if errors:
        raise errors[0]
    assert sizes and min(sizes) >= 12  # never fewer images than were there when the threads started
    # committed batches are seen without reopening the reader; the model was loaded once for all threads
    assert len(reader.search("a probe", k=100)) == 52
    assert len(loads) == 1
    reader.close()


def test_reader_sees_each_new_commit_and_stored_vectors(tmp_path, tiny_model):
    lib = tmp_path / "lib"
    photos = _folder(tmp_path / "p", 0, 5)
    run_cli("index", str(photos), "--library", str(lib), "--model", tiny_model, "-q", check=True)
    with Reader.open(lib) as reader:
        assert len(reader.search("x", k=50)) == 5
        _folder(photos, 5, 3)
        run_cli("index", "--library", str(lib), "-q", check=True)
        assert len(reader.search("x", k=50)) == 8
        (photos / "r000.png").unlink()
        run_cli("index", "--library", str(lib), "-q", check=True)
        paths = {r.path for r in reader.search("x", k=50)}
        assert len(paths) == 7 and str(photos / "r000.png") not in paths

        # an indexed image as a query term: its stored vector, no model; the image itself ranks first
        top = reader.search(Query(terms=(Term.like(str(photos / "r003.png")),), k=1, include_self=True))
        assert top[0].path == str(photos / "r003.png") and top[0].score == pytest.approx(1.0, abs=1e-5)
        by_id = reader.search(Query(terms=(Term.like(top[0].embedding_id),), k=3))
        assert str(photos / "r003.png") not in {r.path for r in by_id} and len(by_id) == 3
        with pytest.raises(NotFoundError):
            reader.search(Query(terms=(Term.like(str(photos / "r000.png")),)))  # deleted
        with pytest.raises(ConfigError):
            reader.search(Query(terms=(Term.text("x", -1.0),)))  # nothing positive to look for


def test_weighted_terms_are_the_normalised_sum_of_unit_vectors(tmp_path, tiny_model):
    lib = tmp_path / "lib"
    photos = _folder(tmp_path / "p", 0, 8)
    run_cli("index", str(photos), "--library", str(lib), "--model", tiny_model, "-q", check=True)
    with Reader.open(lib) as reader:
        enc = reader.text_encoder()
        a, b = enc.embed_texts(["a red circle", "at night"])
        q = 2 * a - 0.5 * b
        q /= np.linalg.norm(q)
        res = reader.search(Query.parse("2:a red circle - 0.5:at night", k=8))
        vectors = {r.path: reader.stored_vector(r.path)[0] for r in res}
        for r in res:
            assert r.score == pytest.approx(float(vectors[r.path] @ q), abs=1e-5)
        assert np.allclose([r.score for r in res], sorted((float(v @ q) for v in vectors.values()), reverse=True),
                           atol=1e-5)


def test_recent_texts_are_not_encoded_again_and_keep_their_vectors(tmp_path, tiny_model, monkeypatch):
    from clipsearch import reader as reader_module

    lib = tmp_path / "lib"
    run_cli("index", str(_folder(tmp_path / "p", 0, 4)), "--library", str(lib), "--model", tiny_model, "-q",
            check=True)
    monkeypatch.setattr(reader_module, "TEXT_CACHE", 2)
    with Reader.open(lib) as reader:
        tower = reader.text_encoder()
        alone = tower.embed_texts(["a red circle"])
        batch = tower.embed_texts(["at night", "a red circle"])
        calls = []
        real = tower.embed_texts
        monkeypatch.setattr(tower, "embed_texts", lambda texts: calls.append(list(texts)) or real(texts))

        first = reader.search(Query.text("a red circle", k=4, cutoff="none"))
        again = reader.search(Query.text("a red circle", k=4, cutoff="none", sort="path"))
        assert calls == [["a red circle"]]  # the second search reused the vector
        assert sorted((r.path, r.score) for r in again) == sorted((r.path, r.score) for r in first)
        # answers are the tower's, bit for bit, for that very call (a batch is its own key)
        assert np.array_equal(reader.embed_texts(["a red circle"]), alone)
        assert np.array_equal(reader.embed_texts(["at night", "a red circle"]), batch)
        assert calls[1:] == [["at night", "a red circle"]]
        assert np.array_equal(reader.embed_texts(["at night", "a red circle"]), batch) and len(calls) == 2
        # beyond TEXT_CACHE answers, the least recently used goes
        reader.embed_texts(["a probe"])  # drops ["a red circle"] (the batch was used after it)
        reader.embed_texts(["a red circle"])
        assert calls[2:] == [["a probe"], ["a red circle"]]
        mine = reader.embed_texts(["a red circle"])
        mine[0, 0] += 1.0  # the caller's array is its own: what is kept stays the tower's answer
        assert np.array_equal(reader.embed_texts(["a red circle"]), alone) and len(calls) == 4
