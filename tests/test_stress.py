"""Scale (reliability.md case 35): many tiny and zero-byte files with a fake encoder, in a child process so
its memory is measured on its own. The walk's memory stays bounded, and a rerun with no changes makes zero
encoder calls. CI runs 20k files; `-m slow` runs 1M (CLIPSEARCH_STRESS_FILES overrides). Figures printed (-s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[3])
from reliability_helpers import FakeEncoder
from clipsearch import Library, imaging

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

root, lib_dir = sys.argv[1], sys.argv[2]
out = {"rss_start_mb": hwm_mb()}
# the walk alone: stream every entry, hold nothing
t = time.perf_counter()
errors = imaging.WalkErrors()
n = sum(1 for _ in imaging.walk(os.fsencode(root), errors))
out.update(walk_files=n, walk_seconds=round(time.perf_counter() - t, 1), walk_peak_mb=hwm_mb())
enc = FakeEncoder()
t = time.perf_counter()
with Library.open(lib_dir, encoder=enc, batch_size=256, workers=2) as lib:
    report = lib.index([root])
out.update(index_seconds=round(time.perf_counter() - t, 1), index_peak_mb=hwm_mb(), encoder_calls=enc.calls,
           embedded=report.embedded, added=report.added, reused=report.reused, skipped=len(report.skipped),
           unchanged=report.unchanged)
print(json.dumps(out))
"""


def make_tree(root: Path, n: int) -> dict:
    """Half in one flat directory, half in a tree of n/200 directories; 1% distinct tiny images, 1% zero-byte,
    the rest copies of one 70-byte PNG (so most reuse one vector: the point is the file count)."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (200, 10, 10)).save(buf, "PNG")
    same = buf.getvalue()
    flat = root / "flat"
    flat.mkdir(parents=True)
    ndirs = max(1, n // 200)
    counts = {"distinct": 0, "empty": 0, "same": 0}
    rng = np.random.default_rng(0)
    for i in range(n):
        d = flat if i % 2 == 0 else root / "tree" / f"{(i // 2) % ndirs:05d}"
        if i % 2 and (i // 2) < ndirs:
            d.mkdir(parents=True, exist_ok=True)
        if i % 100 == 1:
            b = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)).save(b, "PNG")
            data, kind = b.getvalue(), "distinct"
        elif i % 100 == 2:
            data, kind = b"", "empty"
        else:
            data, kind = same, "same"
        fd = os.open(d / f"f{i:07d}.png", os.O_WRONLY | os.O_CREAT, 0o644)
        if data:
            os.write(fd, data)
        os.close(fd)
        counts[kind] += 1
    return counts


def run_child(root: Path, lib_dir: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(root), str(lib_dir), str(HERE)], capture_output=True,
                         text=True, timeout=7200, cwd=HERE.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def stress(tmp_path: Path, n: int) -> None:
    root = tmp_path / "many"
    counts = make_tree(root, n)
    first = run_child(root, tmp_path / "lib")
    again = run_child(root, tmp_path / "lib")
    print(f"\nstress {n} files {counts}:\n  first run {first}\n  no-change rerun {again}")
    assert first["walk_files"] == n
    assert first["added"] == n - counts["empty"] and first["skipped"] == counts["empty"]
    # one model input for every distinct content: the distinct images and the one repeated PNG (seeded: no collisions)
    assert first["embedded"] == counts["distinct"] + 1 and first["reused"] == counts["same"] - 1
    assert again["encoder_calls"] == 0 and again["embedded"] == 0 and again["unchanged"] == n
    assert first["walk_peak_mb"] < 200 and again["walk_peak_mb"] < 200
    assert first["index_peak_mb"] < 400 and again["index_peak_mb"] < 400


def test_stress_20k(tmp_path):
    stress(tmp_path, int(os.environ.get("CLIPSEARCH_STRESS_FILES_CI", "20000")))


@pytest.mark.slow
def test_stress_1m(tmp_path):
    stress(tmp_path, int(os.environ.get("CLIPSEARCH_STRESS_FILES", "1000000")))
