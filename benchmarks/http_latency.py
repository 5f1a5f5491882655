"""Web page latency: warm text searches over HTTP (`clipsearch serve`) next to the same searches through the
Python API, and the time to the first thumbnail grid in a headless browser.

    python benchmarks/http_latency.py                 # a library of 100,000 images
    python benchmarks/http_latency.py --n 20000 --queries 20 --browser-runs 3

The library is built with the store API (random unit vectors, as benchmarks/query_latency.py does) whose
files are real: hard links to a few hundred distinct JPEGs, with the stat fields an index run would record,
so the page can show their thumbnails. The model is ViT-B-32 with random weights (speed does not depend on
their values).

HTTP: `clipsearch serve --port 0` in its own process, one keep-alive client in this one, GET
/api/search?q=TEXT&limit=K&cutoff=none (random weights give no result the cut-off would call a good match;
a user's real model does, and each result's catalog row and JSON are part of the cost). The same texts (the same k) also go through a Reader in this process, in a pass
of their own before the HTTP pass, with the server idle: a query uses the BLAS threads of every core that
other processes leave idle (clipsearch/_blas.py), so running the two side by side, query by query, would
make each see the other's threads as load and measure both on one core. A third pass repeats the HTTP
searches while a CPU-bound process keeps one core busy: what a query costs on a loaded machine.
Browser: Debian's headless chromium
opening /?q=TEXT&cutoff=none, from navigation start to every thumbnail in view decoded (the page records it in
window.clipsearchTimings.grid): new queries with cold thumbnails (made and cached by the server), then the same
queries again (cached).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's clipsearch, installed or not
from _common import ARCH, DEFAULT_WORK, machine, versions, vit_b32_weights  # noqa: E402
from query_latency import QUERIES, fmt, pct  # noqa: E402

DISTINCT_FILES = 300
FILES_PER_DIR = 1000


def make_pictures(folder: Path, n: int) -> list[Path]:
    """n distinct camera-like JPEGs (640x480, blocks of colour and a gradient)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 60, 640, dtype=np.float32)[None, :, None]
    for i in range(n):
        p = folder / f"src_{i:04d}.jpg"
        if not p.exists():
            blocks = rng.integers(0, 196, size=(6, 8, 3)).astype(np.float32)
            img = np.kron(blocks, np.ones((80, 80, 1), dtype=np.float32)) + ramp
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(p, quality=88)
        out.append(p)
    return out


def build_library(path: Path, photos: Path, n: int, model: str) -> None:
    """n random unit vectors committed with the store API; file i is a hard link to one of the pictures."""
    import numpy as np

    from clipsearch.library import Library
    from clipsearch.store import Record

    if (path / ".complete").exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(photos, ignore_errors=True)
    t = time.perf_counter()
    sources = make_pictures(photos.parent / f"{photos.name}-sources", DISTINCT_FILES)
    lib = Library.open(path, model=model, create=True)
    try:
        dim = lib.encoder.dim  # records the model's fingerprint (loads the full model once)
        cat = lib.catalog
        root = cat.add_root(os.fsencode(photos))
        scan = cat.new_scan()
        rng = np.random.default_rng(0)
        chunk = 20_000
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            v = rng.standard_normal((m, dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            recs = []
            for i in range(start, start + m):
                d = photos / f"{i // FILES_PER_DIR:04d}"
                if i % FILES_PER_DIR == 0:
                    d.mkdir(parents=True, exist_ok=True)
                f = d / f"IMG_{i:07d}.jpg"
                os.link(sources[i % len(sources)], f)
                st = f.stat()
                recs.append(Record(path=os.fsencode(f), size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino,
                                   content_hash=f"{i:040x}", vector=v[i - start], width=640, height=480))
            cat.commit_batch(recs, root_id=root, scan=scan)
        cat.touch_root(root, complete=True)
        lib.cache.publish(lib.vector_index())  # the cache file, as an index run leaves it
        cat.checkpoint()
    finally:
        lib.close()
    (path / ".complete").write_text("ok")
    print(f"  built {n:,} images in {time.perf_counter() - t:.0f}s", flush=True)


def start_server(path: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("clipsearch")
    cmd = [exe] if exe else [sys.executable, "-m", "clipsearch"]
    t = time.perf_counter()
    log = open(path.parent / f"{path.name}-serve.log", "w")
    proc = subprocess.Popen([*cmd, "serve", "--library", str(path), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=log, text=True)
    line = proc.stdout.readline()
    if not line.startswith("Serving at "):
        proc.kill()
        raise SystemExit(f"clipsearch serve did not start; see {log.name}")
    print(f"  `clipsearch serve` ready in {time.perf_counter() - t:.1f}s (cache and text model loaded)", flush=True)
    return proc, line.split()[-1].rstrip("/")


def cpu_ns(pid: int) -> int:
    """CPU time used so far by every thread of process `pid` (Linux schedstat, in ns)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass  # a thread that just ended
    return total


def _texts(n_queries: int, salt: str) -> list[str]:
    return [f"{QUERIES[i % len(QUERIES)]} {salt}{i}" for i in range(n_queries)]


def _settle() -> None:
    time.sleep(1.0)  # OpenBLAS threads that spin after a product go to sleep; load samples age


def api_pass(path: Path, texts: list[str], k: int, engine: str) -> tuple[list, list, list]:
    from clipsearch import Query, Reader

    times, cpu, answers = [], [], []
    with Reader.open(path, text_engine=engine) as reader:
        for warm in ("warm up", "a second warm up"):
            reader.search(Query.text(warm, k=k, cutoff="none"))
        used = reader.status()["text_engine"]
        if used != engine:
            raise SystemExit(f"the Python API pass asked for the {engine} text engine and got {used}")
        for text in texts:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            res = reader.search(Query.text(text, k=k, cutoff="none"))
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            answers.append([x.embedding_id for x in res])
    assert all(len(a) == k for a in answers), "fewer results than asked for: nothing would be measured past the search"
    return times, cpu, answers


def http_vs_api(path: Path, url: str, n_queries: int, k: int, server_pid: int) -> None:
    import httpx

    texts = _texts(n_queries, f"k{k} ")  # new to the server's Reader, which keeps recent texts' vectors
    api, api_cpu, answers = {}, {}, {}
    for engine in ("numpy", "onnxruntime"):  # Reader.open's default, and what `clipsearch serve` asks for
        api[engine], api_cpu[engine], answers[engine] = api_pass(path, texts, k, engine)
        _settle()

    def over_http(client, texts, **extra):
        wall, inside, cpu = [], [], []
        for warm in ("warm up", "a second warm up"):
            client.get("/api/search", params={"q": warm, "limit": k, "cutoff": "none"}).raise_for_status()
        for text in texts:
            s0 = cpu_ns(server_pid)
            t0 = time.perf_counter()
            r = client.get("/api/search", params={"q": text, "limit": k, "cutoff": "none", **extra})
            wall.append(time.perf_counter() - t0)
            cpu.append((cpu_ns(server_pid) - s0) / 1e9)
            r.raise_for_status()
            body = r.json()
            inside.append(body["elapsed_ms"] / 1000)
            yield [x["id"] for x in body["results"]]
        over_http.figures = (wall, inside, cpu)

    with httpx.Client(base_url=url, timeout=60) as client:
        engine = client.get("/api/status").json()["text_engine"]
        got = list(over_http(client, texts))
        assert got == answers[engine], "the server and the Python API ranked differently"  # the same answer
        http, inside, server_cpu = over_http.figures
        _settle()
        list(over_http(client, texts, sort="path"))  # the page asking again with another sort: a text seen before
        again, again_inside, _ = over_http.figures
        _settle()
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            list(over_http(client, _texts(n_queries, f"k{k} busy ")))
            busy, busy_inside, _ = over_http.figures
        finally:
            hog.kill()
            hog.wait()
        _settle()
    print(f"  warm text search, k={k}, {n_queries} queries (a pass through the Python API, then one over HTTP):")
    for name in api:
        print(f"    Python API, {name + ' text engine':<23} {fmt(api[name])}"
              + ("   (Reader.open's default)" if name == "numpy" else ""))
    print(f"    HTTP GET /api/search                {fmt(http)}   (the server's text engine: {engine})")
    print(f"    (search inside the server)          {fmt(inside)}")
    print(f"    (HTTP minus API, p50 minus p50)     {1000 * (pct(http, 0.5) - pct(api[engine], 0.5)):7.1f} ms")
    print(f"    CPU time, API search (its thread)   {fmt(api_cpu[engine])}   ({engine})")
    print(f"    CPU time, server per HTTP request   {fmt(server_cpu)}   (all its threads)")
    print(f"    HTTP, the same texts again, sorted  {fmt(again)}   (inside the server {fmt(again_inside)}; "
          f"their vectors kept by the Reader)")
    print(f"    HTTP, one core kept busy            {fmt(busy)}   (inside the server {fmt(busy_inside)})")


def browser_grid(url: str, path: Path, runs: int) -> None:
    if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
        print("  browser: /usr/bin/chromium or /usr/bin/chromedriver missing; apt-get install chromium chromium-driver")
        return
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    shutil.rmtree(path / "thumbs", ignore_errors=True)  # cold thumbnails
    home = tempfile.mkdtemp(prefix="clipsearch-bench-browser-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
                f"--user-data-dir={home}/profile", "--disable-background-networking", "--no-first-run"):
        opts.add_argument(arg)
    os.environ["SE_OFFLINE"] = "true"
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver",
                                                            env={**os.environ, "HOME": home}))
    try:
        texts = [f"{QUERIES[i % len(QUERIES)]} in the grid {i}" for i in range(runs)]
        print(f"  browser (headless chromium, 1280x900), {runs} searches opened as /?q=TEXT, from navigation start:")
        for phase in ("cold", "cached"):
            grid, results = [], []
            for text in texts:
                driver.get(f"{url}/?q={text.replace(' ', '+')}&cutoff=none")
                WebDriverWait(driver, 120).until(lambda d: d.execute_script("return window.clipsearchTimings.grid"))
                t = driver.execute_script("return window.clipsearchTimings")
                grid.append(t["grid"] / 1000)
                results.append(t["results"] / 1000)
            in_view = driver.execute_script(
                "return [...document.querySelectorAll('#grid .tile')]"
                ".filter(t => t.getBoundingClientRect().top < innerHeight).length")
            if not in_view:
                raise SystemExit("the page showed no thumbnails: the grid's time would measure nothing")
            print(f"    {phase + ' thumbnails:':<19} results listed {fmt(results)}")
            print(f"    {'':<19} first grid     {fmt(grid)}   ({in_view} thumbnails in view)")
    finally:
        driver.quit()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--n", type=int, default=100_000, help="images in the library (default 100,000)")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--browser-runs", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # what the CLI sets; must precede numpy's import
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    weights = vit_b32_weights(args.work)
    path = args.work / f"httplib-{args.n}"
    print(f"\nlibrary of {args.n:,} images ({path})", flush=True)
    build_library(path, args.work / f"httplib-{args.n}-photos", args.n, f"{ARCH}:{weights}")
    proc, url = start_server(path)
    try:
        for k in (10, 60):
            http_vs_api(path, url, args.queries, k, proc.pid)
        if args.browser_runs:
            browser_grid(url, path, args.browser_runs)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
