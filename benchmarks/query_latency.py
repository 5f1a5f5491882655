"""Query latency: warm text queries through the Python API, and the cold `clipsearch query` command.

    python benchmarks/query_latency.py              # a library of 100,000 vectors
    python benchmarks/query_latency.py --million    # and one of 1,000,000 (building it takes minutes)

The libraries are built directly with the store API (random unit vectors, files that need not
exist) and the search cache is published, as `clipsearch index` leaves it; the model is ViT-B-32
with random weights (speed does not depend on their values).

Warm: one Library in this process, p50/p95 over --queries distinct texts of `Library.search(text,
k=10)`, and of its three parts timed separately: text encoding, vector search, catalog lookup.
For comparison the same texts are also encoded by the full torch model (open_clip's own encode_text)
in fp32 and bf16 (where only the image tower is mixed: the text tower stays fp32).

Cold: `clipsearch query TEXT --library L` as a new process, from process start to its output (wall
clock, p50 over --cold-runs), and the same steps instrumented in a child process: imports, opening
the library and loading the text model, the query itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if "--blas-threads" in sys.argv:  # must be set before numpy is imported
    os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[sys.argv.index("--blas-threads") + 1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's clipsearch, installed or not
from _common import ARCH, DEFAULT_WORK, machine, versions, vit_b32_weights  # noqa: E402

QUERIES = [
    "a red circle", "a dog on the beach", "two people hiking in the mountains at sunrise", "a bowl of ramen",
    "a city skyline at night with lights reflecting on the river", "a cat sleeping on a keyboard", "snow",
    "an old wooden boat", "a blue square above a yellow triangle", "children playing football in the park",
    "a close-up of a sunflower", "a red car parked in front of a brick house", "the Eiffel tower",
    "a birthday cake with candles", "a plate of sushi on a black table", "a green forest in the fog",
]


def build_library(path: Path, n: int, model: str) -> None:
    """n random unit vectors committed with the store API, then the cache published."""
    import numpy as np

    from clipsearch.library import Library
    from clipsearch.store import Record

    if (path / ".complete").exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    lib = Library.open(path, model=model, create=True)
    try:
        dim = lib.encoder.dim  # records the model's fingerprint (loads the full model once)
        cat = lib.catalog
        root = cat.add_root(b"/bench/photos")
        scan = cat.new_scan()
        rng = np.random.default_rng(0)
        chunk = 20_000
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            v = rng.standard_normal((m, dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            recs = [Record(path=f"/bench/photos/{(start + i) // 1000:04d}/IMG_{start + i:07d}.jpg".encode(),
                           size=1000 + i, mtime_ns=1, ino=start + i + 1, content_hash=f"h{start + i:012d}", vector=v[i],
                           width=4000, height=3000) for i in range(m)]
            cat.commit_batch(recs, root_id=root, scan=scan)
        cat.touch_root(root, complete=True)
        lib.cache.publish(lib.vector_index())  # the cache file, as an index run leaves it
        cat.checkpoint()
    finally:
        lib.close()
    (path / ".complete").write_text("ok")
    print(f"  built {n:,} vectors in {time.perf_counter() - t:.0f}s", flush=True)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def fmt(xs: list[float]) -> str:
    return f"p50 {1000 * pct(xs, 0.5):7.1f} ms   p95 {1000 * pct(xs, 0.95):7.1f} ms"


def warm(path: Path, n_queries: int, compare_torch: bool) -> None:
    import numpy as np

    from clipsearch.library import Library

    texts = [QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" {i}") for i in range(n_queries)]
    with Library.open(path, create=False) as lib:
        index = lib.vector_index()
        enc = lib.text_encoder()
        lib.search("warm up", k=10)
        parts = {"text encoding": [], "vector search": [], "catalog lookup": [], "Library.search total": []}
        cpu: list[float] = []  # CPU time of this thread: what the query costs without another process competing
        for text in texts:
            t0 = time.perf_counter()
            q = enc.embed_texts([text])[0]
            t1 = time.perf_counter()
            fetch = min(index.ntotal, 26)  # what rank() fetches for k=10
            scores, ids = index.search(q, fetch)
            t2 = time.perf_counter()
            lib.catalog.files_for_embeddings(ids.tolist())
            t3 = time.perf_counter()
            c3 = time.thread_time()
            res = lib.search(text, k=10)
            t4 = time.perf_counter()
            cpu.append(time.thread_time() - c3)
            assert len(res) == 10
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(dt)
        print(f"  warm text query through the Python API ({type(enc).__name__}, {index.ntotal:,} vectors, "
              f"{n_queries} queries, k=10):")
        for key, xs in parts.items():
            print(f"    {key:<24} {fmt(xs)}")
        from clipsearch import _blas

        print(f"    {'(its CPU time)':<24} {fmt(cpu)}   (the calling thread only; BLAS threads clipsearch would "
              f"choose now: {_blas.query_thread_count()} of {_blas._cores()})")
        # the FAISS kernel the cache would use on its own, for comparison with the matrix-vector product
        q = enc.embed_texts(["a red circle"])[0][None]
        fx = []
        for _ in range(max(5, n_queries // 2)):
            t = time.perf_counter()
            index.index.search(q, 26)
            fx.append(time.perf_counter() - t)
        print(f"    {'(faiss IndexFlatIP search)':<24} {fmt(fx)}")
        onnx_engine(path, texts, enc)
        if compare_torch:
            from clipsearch.encoders import load_encoder

            ref = enc.embed_texts(texts)
            for precision in ("fp32", "bf16"):
                full = load_encoder(lib.model_name, device="cpu", precision=precision)
                full.embed_texts(["warm up"])
                xs = []
                for text in texts:
                    t = time.perf_counter()
                    full.embed_texts([text])
                    xs.append(time.perf_counter() - t)
                cos = float(np.min(np.sum(full.embed_texts(texts) * ref, axis=1)))
                print(f"    {'(torch ' + precision + ')':<24} {fmt(xs)}   min cosine vs numpy fp32 {cos:.6f}")
                del full


def onnx_engine(path: Path, texts: list[str], numpy_enc) -> None:
    """The same texts through the engine `clipsearch serve` uses (Reader's text_engine="onnxruntime")."""
    import numpy as np

    from clipsearch import Query, Reader

    with Reader.open(path, text_engine="onnxruntime") as reader:
        t = time.perf_counter()
        enc = reader.text_encoder()
        setup = time.perf_counter() - t
        if enc.engine != "onnxruntime":
            print("    (onnxruntime engine)     not available: pip install onnxruntime onnx")
            return
        reader.search(Query.text("warm up", k=10))
        encode, total = [], []
        for text in texts:
            t0 = time.perf_counter()
            enc.embed_texts([text + " again"])
            t1 = time.perf_counter()
            reader.search(Query.text(text, k=10))
            total.append(time.perf_counter() - t1)
            encode.append(t1 - t0)
        cos = float(np.min(np.sum(enc.embed_texts(texts) * numpy_enc.embed_texts(texts), axis=1)))
        print(f"    {'onnxruntime engine:':<24} (what `clipsearch serve` uses; set up in {setup:.1f} s)")
        print(f"    {'  text encoding':<24} {fmt(encode)}   min cosine vs numpy fp32 {cos:.6f}")
        print(f"    {'  Reader.search total':<24} {fmt(total)}")


CHILD = r"""
import time, os, sys, json
t_start = float(os.environ["BENCH_T0"])
t0 = time.time()
from clipsearch.cli import cli  # what the command imports before running
from clipsearch.library import Library
import numpy
t1 = time.time()
lib = Library.open(sys.argv[1], create=False)
lib.vector_index()
enc = lib.text_encoder()
t2 = time.time()
res = lib.search(sys.argv[2], k=10)
t3 = time.time()
print(json.dumps({"startup": t0 - t_start, "imports": t1 - t0, "open+load": t2 - t1, "query": t3 - t2,
                  "total": t3 - t_start, "torch_imported": "torch" in sys.modules}))
"""


def cold(path: Path, runs: int) -> None:
    exe = shutil.which("clipsearch") or None
    cmd = [exe] if exe else [sys.executable, "-m", "clipsearch"]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    walls = []
    out = ""
    for i in range(runs):
        text = QUERIES[i % len(QUERIES)]
        t = time.perf_counter()
        # random weights: the default cut-off may find no result a real model's would; print the 10 best
        p = subprocess.run([*cmd, "query", text, "--library", str(path), "-k", "10", "--cutoff", "none"],
                           capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if p.returncode:
            raise SystemExit(f"clipsearch query failed: {p.stderr}")
        out = p.stdout
    print(f"  cold `clipsearch query TEXT -k 10 --cutoff none` ({runs} runs), process start to output: {fmt(walls)}")
    print("    last output's first line: " + out.splitlines()[0].strip())
    parts: dict[str, list[float]] = {}
    torch_seen = False
    for i in range(runs):
        t0 = time.time()
        p = subprocess.run([sys.executable, "-c", CHILD, str(path), QUERIES[i % len(QUERIES)]], capture_output=True,
                           text=True, env={**env, "BENCH_T0": repr(t0)})
        if p.returncode:
            raise SystemExit(p.stderr)
        d = json.loads(p.stdout.strip().splitlines()[-1])
        torch_seen |= d.pop("torch_imported")
        for k, v in d.items():
            parts.setdefault(k, []).append(v)
    print("    breakdown (same steps, instrumented):")
    labels = {"startup": "interpreter start", "imports": "imports (click, clipsearch, numpy, sqlalchemy)",
              "open+load": "open library + cache + load text model", "query": "query (encode, search, lookup)",
              "total": "total"}
    for k, xs in parts.items():
        print(f"      {labels[k]:<48} p50 {1000 * pct(xs, 0.5):7.0f} ms")
    print(f"      torch imported: {'yes' if torch_seen else 'no'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--n", type=int, default=100_000, help="vectors in the main library (default 100,000)")
    ap.add_argument("--million", action="store_true", help="also a library of 1,000,000 vectors")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--no-torch-compare", action="store_true", help="skip the torch text-tower comparison")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="OpenBLAS threads for the warm queries (default: numpy's own, one per core)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"versions: {versions()}; OpenBLAS threads for warm queries: {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")
    weights = vit_b32_weights(args.work)
    model = f"{ARCH}:{weights}"
    sizes = [args.n] + ([1_000_000] if args.million else [])
    for n in sizes:
        path = args.work / f"querylib-{n}"
        print(f"\nlibrary of {n:,} vectors ({path})", flush=True)
        build_library(path, n, model)
        warm(path, args.queries, compare_torch=not args.no_torch_compare and n == sizes[0])
        cold(path, args.cold_runs)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
