"""What the truncated-switch lock costs an ordinary decode: imaging.decode (which holds the shared side of
imaging._decode_lock) against imaging._decode (the same decode with no lock, what the ordinary path ran
before the lock), on pictures from tiny to ~1 MP, on one thread and on several threads at once.

    python benchmarks/decode_lock_overhead.py
    python benchmarks/decode_lock_overhead.py --rounds 5 --threads 4

The two variants alternate, round after round, so a change of machine load hits both alike; the best round
of each is printed (microseconds per decode), with the difference; on a busy machine the difference is
noise, and the first line (the lock alone, timed in a tight loop) is the figure to trust.
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's clipsearch, installed or not

from clipsearch import imaging  # noqa: E402


def picture(fmt: str, size: tuple[int, int]) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(size[0])
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def unlocked(data, *, draft):
    return imaging._decode(data, max_pixels=imaging.DEFAULT_MAX_PIXELS, draft=draft)


def locked(data, *, draft):
    return imaging.decode(data, draft=draft)


def per_decode_us(fn, data: bytes, n: int, threads: int, draft: int) -> float:
    """Wall microseconds per decode with `threads` threads each decoding n times."""
    start = threading.Barrier(threads + 1)

    def work():
        start.wait()
        for _ in range(n):
            fn(data, draft=draft)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return (time.perf_counter() - t0) / (n * threads) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="threads decoding at once in the second table")
    args = ap.parse_args()
    cases = [("PNG 48x40", picture("PNG", (48, 40)), 2000),
             ("JPEG 64x64", picture("JPEG", (64, 64)), 2000),
             ("JPEG 640x480", picture("JPEG", (640, 480)), 200),
             ("JPEG 1152x864 (draft 224)", picture("JPEG", (1152, 864)), 60)]
    import timeit

    lock = imaging._decode_lock

    def shared_side():
        lock.acquire_shared()
        lock.release_shared()

    best = min(timeit.repeat(shared_side, number=100_000, repeat=args.rounds)) / 100_000 * 1e6
    print(f"the shared side alone (what an ordinary decode adds): {best:.2f} microseconds per acquire + release")
    for threads in (1, args.threads):
        print(f"-- {threads} thread(s); best of {args.rounds} rounds, microseconds per decode")
        print(f"{'picture':<28}{'no lock':>10}{'lock':>10}{'diff':>10}{'diff %':>9}")
        for name, data, n in cases:
            best = {"no lock": float("inf"), "lock": float("inf")}
            for _ in range(args.rounds):
                for label, fn in (("no lock", unlocked), ("lock", locked)):
                    best[label] = min(best[label], per_decode_us(fn, data, max(1, n // threads), threads, 224))
            diff = best["lock"] - best["no lock"]
            print(f"{name:<28}{best['no lock']:>10.1f}{best['lock']:>10.1f}{diff:>+10.1f}"
                  f"{diff / best['no lock'] * 100:>+8.1f}%")


if __name__ == "__main__":
    main()
