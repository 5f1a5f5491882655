"""Ctrl-C and SIGTERM during `clipsearch index` (real child processes): the batch being committed is
finished or rolled back, the cache is published, the lock released, and the exit status is 130 / 143."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipsearch import Library
from clipsearch.vector_index import VectorIndex

from conftest import make_image
from reliability_helpers import db_rows


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            pass
    return out


def _interactive_signals() -> None:
    """The child starts as a command typed at a terminal would: SIGINT not ignored. A test run started in
    the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and Python then leaves it
    ignored, so the child would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_index(tmp_path, tiny_model, sig, code):
    photos = tmp_path / "photos"
    n = 240
    for i in range(n):
        make_image(photos / f"{i:04d}.png", 1000 + i, size=(32, 32))
    lib_dir = tmp_path / "lib"
    log = tmp_path / "log.jsonl"
    # 60 batches at 0.05 s each: the run lasts seconds however fast indexing becomes (240 tiny images once took 0.6 s,
    # and the signal arrived after the run had ended)
    env = dict(os.environ, CLIPSEARCH_CRASH_LOG=str(log), CLIPSEARCH_CRASH_PAUSE="after_commit:0.05")
    env.pop("CLIPSEARCH_HOME", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "clipsearch", "index", str(photos), "--library", str(lib_dir), "--model", tiny_model,
         "--batch-size", "4", "--workers", "1", "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interactive_signals)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len([e for e in read_log(log) if e["event"] == "after_commit"]) < 3:
        time.sleep(0.02)
    child.send_signal(sig)
    out, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    assert "Traceback" not in err
    assert ("Terminated" if sig == signal.SIGTERM else "Interrupted") in err

    # the lock is free
    fd = os.open(lib_dir / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    # every acknowledged batch is there; the cache was published up to the last commit
    committed = {p: h for e in read_log(log) if e["event"] == "after_commit" for p, h in e["ok"].items()}
    assert committed and len(committed) < n, "the signal arrived after the run had finished"
    stored = dict(db_rows(lib_dir, "SELECT path, content_hash FROM files WHERE status='ok'"))
    for p, h in committed.items():
        assert stored.get(os.fsencode(p)) == h
    seq = int(db_rows(lib_dir, "SELECT value FROM meta WHERE key='seq'")[0][0])
    _, header = VectorIndex.load(lib_dir / "index.faiss")
    assert header.watermark_seq == seq
    assert not list(lib_dir.glob("index.faiss.tmp.*"))
    with Library.open(lib_dir, create=False) as lib:
        assert lib.check().ok
        remaining = n - len(stored)
        report = lib.index([photos])
        assert report.embedded == remaining and report.unchanged == len(stored)
        assert lib.check().ok and lib.status()["images"] == n
