"""Wall time of `clipsearch index` over 300 unchanged files: before (the model loaded up front, as before the
lazy load) and after (the model loaded only when a file's content is new, so here never).

    python benchmarks/reindex_unchanged.py                        # ViT-B-32 with random weights
    git archive main | tar -x -C /tmp/before   # a clean copy of the commit to compare with, then
    python benchmarks/reindex_unchanged.py --before-src /tmp/before   # "before" = that copy's clipsearch

Each run is a fresh `python -m clipsearch index DIR --library LIB -q` process, timed from outside (so
interpreter start and imports count, as a user waits for them), and its own report line is printed too.
"before" is, by default, this checkout with Library._index_roots made to load the model first (the one
thing the change removed); with --before-src it is the given checkout's own code.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ARCH, DEFAULT_WORK, machine, vit_b32_weights  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

EAGER = """
import sys
from clipsearch import library
real = library.Library._index_roots
def eager(self, roots, on_progress):
    self.encoder  # the model first, whatever the files
    return real(self, roots, on_progress)
library.Library._index_roots = eager
from clipsearch.cli import main
sys.argv = ["clipsearch"] + sys.argv[1:]
main()
"""


def tiny_images(d: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    done = d / ".complete"
    if done.exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), "RGB").resize((32, 32)).save(d / f"{i:04d}.png")
    done.write_text("ok")
    return d


def run(args: list[str], env: dict, cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    # cwd outside any checkout: `python -m` puts the working directory first on sys.path, before PYTHONPATH
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr}")
    return wall, proc.stderr.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--before-src", type=Path, default=None,
                    help="a clipsearch checkout whose code is 'before' (put first on PYTHONPATH)")
    args = ap.parse_args()
    weights = vit_b32_weights(args.work)
    photos = tiny_images(args.work / f"reindex-{args.files}", args.files)
    lib = args.work / f"reindex-{args.files}-lib"
    env = {k: v for k, v in os.environ.items() if k != "CLIPSEARCH_HOME"}
    env["PYTHONPATH"] = str(REPO)
    common = [str(photos), "--library", str(lib), "-q"]
    subprocess.run(["rm", "-rf", str(lib)], check=True)
    wall, line = run(["-m", "clipsearch", "index", *common, "--model", f"{ARCH}:{weights}"], env, args.work)
    print(f"{machine()}")
    print(f"first index of {args.files} files ({ARCH}, random weights): {wall:.2f} s wall; {line}")

    if args.before_src:
        before_cmd, before_env = ["-m", "clipsearch", "index", *common], {**env, "PYTHONPATH": str(args.before_src)}
        label = f"before ({args.before_src})"
    else:
        before_cmd, before_env = ["-c", EAGER, "index", *common], env
        label = "before (model loaded first)"
    after_cmd = ["-m", "clipsearch", "index", *common]
    times: dict[str, list[float]] = {label: [], "after (lazy model)": []}
    lines: dict[str, str] = {}
    for _ in range(args.runs):  # alternate, so a change of machine load hits both alike
        for name, cmd, e in ((label, before_cmd, before_env), ("after (lazy model)", after_cmd, env)):
            wall, lines[name] = run(cmd, e, args.work)
            times[name].append(wall)
    print(f"re-index of {args.files} unchanged files, {args.runs} runs each, wall seconds (median, min-max):")
    for name, ts in times.items():
        assert "unchanged %d," % args.files in lines[name], lines[name]
        print(f"  {name:<{max(map(len, times)) + 1}} {statistics.median(ts):6.2f}  ({min(ts):.2f}-{max(ts):.2f})"
              f"   report: {lines[name]}")


if __name__ == "__main__":
    main()
