"""The honest cut-off, measured: does `cutoff="auto"` answer [] for what a library does not hold, and keep what it does?

    python benchmarks/cutoff.py                 # two libraries of 2,500 rendered images (about 5 minutes)
    python benchmarks/cutoff.py --n 1000        # quicker, noisier

For each of two seeds (one to calibrate on, one to measure on) it renders a shapes library with
`clipsearch shapes DIR --n N --seed S` and indexes it with `clipsearch index --model shapes` (the shipped
demo model). The 48 (colour, shape) pairs are shuffled into folds of --pairs pairs. For each fold,
every image containing one of the fold's pairs is moved out of the folder and the library re-indexed
(the other folds' images come back, reusing their vectors), then every pair is searched as "a {colour}
{shape}" through the Python API:

  absent pairs (the fold's): the search must answer [] (target: at least 90% of them)
  present pairs (all others): of the relevant results in the top 10 without a cut-off (an image with
  an object of that colour and shape), the cut-off must keep at least 95%

Calibration reads the gaps (cutoff.py: score minus the query's floor, in logits) on the first library
and prints the range of thresholds that meets both targets there; the measurement runs the shipped rule
(cutoff="auto", cutoff.GAP_LOGITS) on the second library end to end. For comparison it also prints what
a z-score threshold and a flat score threshold, calibrated the same way, give on the measurement library.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's clipsearch, installed or not
from _common import DEFAULT_WORK, machine  # noqa: E402

ABSENT_TARGET, PRESENT_TARGET = 0.90, 0.95


def clipsearch(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run([sys.executable, "-m", "clipsearch", *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"clipsearch {' '.join(args)} failed:\n{proc.stderr}")


def pairs_in(scene: dict) -> set[tuple[str, str]]:
    return {(o["color"], o["shape"]) for o in scene["objects"]}


def run_library(work: Path, n: int, seed: int, fold_size: int) -> list[dict]:
    """Render, index and search one library through every fold; one record per (fold, pair) search."""
    import numpy as np

    from clipsearch import Library
    from clipsearch.query import Query
    from clipsearch.training import shapes

    data, lib_dir, held = work / f"shapes-{seed}-{n}", work / f"library-{seed}-{n}", work / f"held-{seed}-{n}"
    if not (data / "scenes.jsonl").exists():
        shutil.rmtree(data, ignore_errors=True)
        t = time.perf_counter()
        clipsearch("shapes", str(data), "--n", str(n), "--seed", str(seed))
        print(f"  rendered {n} images (seed {seed}) in {time.perf_counter() - t:.0f}s", flush=True)
    scenes = {s["file"]: s for s in map(json.loads, (data / "scenes.jsonl").read_text().splitlines())}
    images = data / "images"
    held.mkdir(exist_ok=True)
    for p in held.iterdir():  # a run that stopped half way: put everything back
        os.replace(p, images / p.name)
    all_pairs = [(c, s) for c in shapes.COLORS for s in shapes.SHAPES]
    order = np.random.default_rng(seed).permutation(len(all_pairs))
    folds = [[all_pairs[i] for i in order[j:j + fold_size]] for j in range(0, len(order), fold_size)]
    records = []
    t = time.perf_counter()
    for f, removed in enumerate(folds):
        gone = set(removed)
        for p in held.iterdir():
            os.replace(p, images / p.name)
        for name, scene in scenes.items():
            if pairs_in(scene) & gone:
                os.replace(images / name, held / name)
        clipsearch("index", str(images), "--library", str(lib_dir), "--model", "shapes", "-q")
        present_files = {name for name in scenes if (images / name).exists()}
        with Library.open(lib_dir, create=False) as lib:
            for pair in all_pairs:
                text = f"a {pair[0]} {pair[1]}"
                plain = lib.search(Query.text(text, k=10, cutoff="none"))
                auto = lib.search(Query.text(text, k=10, cutoff="auto"))
                rel = [pair in pairs_in(scenes[os.path.basename(r.path)]) for r in plain]
                kept = {r.path for r in auto}
                records.append({
                    "fold": f, "pair": pair, "absent": pair in gone, "library": len(present_files),
                    "gaps": [r.gap * 1.0 for r in plain], "z": [r.z for r in plain], "scores": [r.score for r in plain],
                    "relevant": rel, "kept": [r.path in kept for r in plain], "auto_n": len(auto),
                    "min_gap": auto[0].min_gap if auto else None,
                })
    for p in held.iterdir():
        os.replace(p, images / p.name)
    print(f"  {len(folds)} folds of {fold_size} absent pairs searched in {time.perf_counter() - t:.0f}s "
          f"(libraries of {min(r['library'] for r in records)}-{max(r['library'] for r in records)} images)", flush=True)
    return records


def values(records: list[dict], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """(absent queries' top-1 value, present queries' relevant top-10 values)."""
    absent = [r[key][0] * scale for r in records if r["absent"] and r[key]]
    present = [v * scale for r in records if not r["absent"] for v, rel in zip(r[key], r["relevant"]) if rel]
    return absent, present


def rates(absent: list[float], present: list[float], n_absent: int, threshold: float) -> tuple[float, float]:
    """Share of absent queries answered [] and of present relevant results kept, for `value >= threshold`."""
    empty = (n_absent - sum(v >= threshold for v in absent)) / n_absent
    kept = sum(v >= threshold for v in present) / len(present)
    return empty, kept


def window(absent: list[float], present: list[float], n_absent: int) -> tuple[float, float] | None:
    """The thresholds meeting both targets on these values: [lowest, highest], or None."""
    cands = sorted(set(absent) | set(present))
    ok = [t for t in cands if rates(absent, present, n_absent, t)[0] >= ABSENT_TARGET
          and rates(absent, present, n_absent, t)[1] >= PRESENT_TARGET]
    if not ok:
        return None
    lo = max([v for v in absent if v < ok[0]] + [ok[0]])  # just above an absent value
    return ok[0], ok[-1] if ok[-1] > lo else lo


def pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.quantile(np.asarray(xs), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2500, help="images rendered per library")
    ap.add_argument("--pairs", type=int, default=8, help="absent (colour, shape) pairs per fold")
    ap.add_argument("--calibrate-seed", type=int, default=101)
    ap.add_argument("--measure-seed", type=int, default=202)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK / "cutoff")
    args = ap.parse_args()
    from clipsearch import cutoff

    args.work.mkdir(parents=True, exist_ok=True)
    scale = cutoff.model_logit_scale("shapes")
    print(f"cut-off benchmark: shapes demo model (logit scale {scale:.2f}), libraries of {args.n} rendered images "
          f"less every image holding an absent pair; {machine()}", flush=True)
    start = time.perf_counter()
    print(f"calibration library (seed {args.calibrate_seed}):", flush=True)
    cal = run_library(args.work, args.n, args.calibrate_seed, args.pairs)
    print(f"measurement library (seed {args.measure_seed}):", flush=True)
    mea = run_library(args.work, args.n, args.measure_seed, args.pairs)

    n_abs_cal = sum(r["absent"] for r in cal)
    a, p = values(cal, "gaps", scale)
    print(f"\ncalibration: gap above the query's floor, in logits (gap x {scale:.2f})")
    print(f"  absent pairs, best result:        p50 {pct(a, .5):6.2f}  p90 {pct(a, .9):6.2f}  max {max(a):6.2f}"
          f"   ({n_abs_cal} queries)")
    print(f"  present pairs, relevant top 10:   p01 {pct(p, .01):6.2f}  p05 {pct(p, .05):6.2f}  p50 {pct(p, .5):6.2f}"
          f"   ({len(p)} results)")
    w = window(a, p, n_abs_cal)
    if w is None:
        print("  no threshold meets both targets on the calibration library")
    else:
        print(f"  thresholds meeting both targets: {w[0]:.2f} .. {w[1]:.2f} (midpoint {(w[0] + w[1]) / 2:.2f})")
    print(f"  chosen threshold: cutoff.GAP_LOGITS = {cutoff.GAP_LOGITS:.2f} logits "
          f"(= a gap of {cutoff.GAP_LOGITS / scale:.4f} in cosine for this model)")

    n_abs = sum(r["absent"] for r in mea)
    empty = sum(r["absent"] and r["auto_n"] == 0 for r in mea) / n_abs
    rel = [(rel, kept) for r in mea if not r["absent"] for rel, kept in zip(r["relevant"], r["kept"]) if rel]
    kept = sum(k for _, k in rel) / len(rel)
    ok = empty >= ABSENT_TARGET and kept >= PRESENT_TARGET
    print(f"\nmeasurement (seed {args.measure_seed}), end to end with cutoff=\"auto\" as shipped:")
    print(f"  absent pairs answered []:            {sum(r['absent'] and r['auto_n'] == 0 for r in mea)}/{n_abs}"
          f" = {100 * empty:.1f}%   (target >= {100 * ABSENT_TARGET:.0f}%)")
    print(f"  present pairs' relevant top-10 kept: {sum(k for _, k in rel)}/{len(rel)} = {100 * kept:.1f}%"
          f"   (target >= {100 * PRESENT_TARGET:.0f}%)")
    present_n = [r["auto_n"] for r in mea if not r["absent"]]
    print(f"  results per present query: mean {sum(present_n) / len(present_n):.1f} of 10;"
          f" {'both targets met' if ok else 'TARGETS NOT MET'}")

    print("\nfor comparison, other rules calibrated on the first library (midpoint of their window), measured on the second:")
    for label, key, unit in (("gap above floor (the shipped rule)", "gaps", scale), ("z = (score-mean)/std", "z", 1.0),
                             ("flat cosine score", "scores", 1.0)):
        ca, cp = values(cal, key, unit)
        wk = window(ca, cp, n_abs_cal)
        ma, mp = values(mea, key, unit)
        if wk is None:
            t = (pct(ca, .9) + pct(cp, .05)) / 2
            note = "no window on calibration; p90/p05 midpoint"
        else:
            t, note = (wk[0] + wk[1]) / 2, f"window {wk[0]:.3f}..{wk[1]:.3f}"
        e, k = rates(ma, mp, n_abs, t)
        print(f"  {label:36s} threshold {t:8.3f} ({note}): absent [] {100 * e:5.1f}%, relevant kept {100 * k:5.1f}%")
    print(f"\ntotal {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
