"""Filtered search latency: unfiltered vs filters leaving 3, 1,000 and 50,000 of 100,000 candidates.

    python benchmarks/filters.py               # 100,000 vectors of dimension 512 (ViT-B-32's)
    python benchmarks/filters.py --n 1000000   # a million (building it takes minutes)

The library is built directly with the store API (random unit vectors, files that need not exist,
metadata laid out so that each filter below leaves a known number of candidates) and searched with
search.rank() on one warm VectorIndex, as a long-lived reader does: p50/p95 over --queries random query
vectors, k=10. The text tower's time (the same for every row) is left out. Which way rank() went is
shown: "subset" scores only the candidates' vectors, "scan" scans the index and checks the best ids.
"""

from __future__ import annotations

import argparse
import calendar
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's clipsearch, installed or not
from _common import DEFAULT_WORK, machine, versions  # noqa: E402

DIM = 512
Y2019 = calendar.timegm((2019, 1, 1, 0, 0, 0))
DAY = 86_400


def meta(i: int, n: int) -> dict:
    """File i: folder i // 1000 (1,000 files each), taken in 2019 for every other file (n / 2 of them),
    format 'gif' for exactly three, 'jpeg' for the rest."""
    return dict(path=f"/bench/photos/{i // 1000:04d}/IMG_{i:07d}.jpg".encode(), mtime_ns=(Y2019 + i) * 10**9,
                taken_at=float(Y2019 + (i % 360) * DAY if i % 2 == 0 else Y2019 - (1 + i % 700) * DAY),
                format="gif" if i in (7, n // 2 + 11, n - 5) else "jpeg", width=4000, height=3000, meta_version=1)


def build(path: Path, n: int) -> None:
    import numpy as np

    from clipsearch.store import Catalog, Record

    if (path / ".complete").exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    t = time.perf_counter()
    cat = Catalog.open(path / "library.db")
    root = cat.add_root(b"/bench/photos")
    scan = cat.new_scan()
    rng = np.random.default_rng(0)
    for start in range(0, n, 20_000):
        m = min(20_000, n - start)
        v = rng.standard_normal((m, DIM), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        cat.commit_batch([Record(size=1, ino=start + i + 1, content_hash=f"h{start + i:09d}", vector=v[i],
                                 **meta(start + i, n)) for i in range(m)], root_id=root, scan=scan)
    cat.checkpoint()
    cat.close()
    (path / ".complete").write_text("ok")
    print(f"  built {n:,} vectors in {time.perf_counter() - t:.0f}s", flush=True)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    import numpy as np

    from clipsearch import search
    from clipsearch.filters import check_filters
    from clipsearch.query import Filters
    from clipsearch.store import Catalog
    from clipsearch.vector_index import VectorIndex

    n = args.n
    path = args.work / f"filters-{n}"
    print(f"filtered search benchmark: {n:,} vectors x {DIM}; {machine()}")
    print(f"  {versions()}", flush=True)
    build(path, n)
    cat = Catalog.open(path / "library.db")
    ids, vecs = cat.live_vectors(DIM)
    index = VectorIndex(DIM)
    index.add(ids, vecs)
    del vecs
    half = f"/bench/photos/{n // 2000:04d}"
    cases = [
        ("no filter", None),
        ("format gif (3)", Filters(formats=("gif",))),
        (f"folder {half} (1,000)", Filters(folder=half)),
        (f"glob {half}/IMG_*.jpg (1,000)", Filters(path_glob=f"{half}/IMG_*.jpg")),
        (f"glob */{half[-4:]}/IMG_* (1,000, no literal head)", Filters(path_glob=f"*/{half[-4:]}/IMG_*")),
        ("taken in 2019 (half)", Filters(taken_after=Y2019, taken_before=Y2019 + 365 * DAY)),
    ]
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((args.queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print(f"\n  {'filter':48s} {'candidates':>10s} {'way':>7s} {'p50 ms':>8s} {'p95 ms':>8s}  {'SQL ms':>7s}")
    for label, f in cases:
        checked = check_filters(f) if f is not None else None
        limit = max(10, min(search.SUBSET_MAX, index.ntotal // search.SUBSET_FRACTION))
        if checked is None:
            count, way, sql_ms = n, "scan", 0.0
        else:
            t = time.perf_counter()
            cands = cat.candidate_embedding_ids(checked, limit)
            sql_ms = 1000 * (time.perf_counter() - t)
            way = "subset" if cands is not None else "scan"
            with cat.read() as conn:
                import sqlalchemy as sa

                from clipsearch.store import files_table
                from clipsearch.store.filtering import filter_conditions

                conds, glob = filter_conditions(checked, cat.backend.path_text)
                rows = conn.execute(sa.select(files_table.c.path).where(*conds)).all()
                count = sum(1 for (p,) in rows if glob is None or glob.matches(p))
        search.rank(index, cat, queries[0], 10, filters=checked)  # warm: caches built once per index change
        times = []
        for q in queries:
            t = time.perf_counter()
            res = search.rank(index, cat, q, 10, filters=checked)
            times.append(time.perf_counter() - t)
            assert len(res) == min(10, count)
        print(f"  {label:48s} {count:>10,} {way:>7s} {1000 * pct(times, .5):8.1f} {1000 * pct(times, .95):8.1f}"
              f"  {sql_ms:7.1f}", flush=True)
    cat.close()


if __name__ == "__main__":
    main()
