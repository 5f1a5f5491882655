"""Cold query latency on the demo model: text, --like PATH, --image NEW (not in the library), side by side.

    .venv/bin/python benchmarks/cold_query.py [--runs 5] [--before main] [--sample ../shared/shapes-sample]

Each figure is the median (p50) wall time of `python -m clipsearch query ...` in a new process (the
files are in the OS cache: "cold" means a new process, not a cold disk) over a library of the shapes
sample indexed with `--model shapes`. The same commands also run on the code of another git ref
(`--before`, default main; its `clipsearch/` is extracted with git archive into a temporary folder and put
first on PYTHONPATH, with its own library), so the before figures come from the same run on the same
machine. Then where a torch-path query spends its time: the imports and the model load, in fresh processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402


class Failed(Exception):
    pass


def run(args: list[str], code: Path, env_extra: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ)
    env.pop("CLIPSEARCH_HOME", None)
    env["PYTHONPATH"] = str(code)
    env.update(env_extra or {})
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=str(code))
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise Failed(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return took, proc


def p50(args: list[str], code: Path, runs: int) -> float | None:
    """The median, or None when that code does not have this command (e.g. --like before it existed)."""
    try:
        return statistics.median(run(args, code)[0] for _ in range(runs))
    except Failed as e:
        if "No such option" in str(e):
            return None
        raise


def make_library(code: Path, images: Path, lib: Path) -> None:
    run(["-m", "clipsearch", "index", str(images), "--library", str(lib), "--model", "shapes", "-q"], code)


def new_image(sample: Path, out: Path) -> Path:
    """A picture the library does not hold: an indexed one, mirrored and re-encoded."""
    from PIL import Image, ImageOps

    with Image.open(sorted((sample / "images").iterdir())[2]) as im:
        ImageOps.mirror(im.convert("RGB")).save(out, quality=85)
    return out


def timings(code: Path, lib: Path, like: Path, image: Path, runs: int) -> dict:
    q = ["-m", "clipsearch", "query", "--library", str(lib), "-k", "10"]
    return {
        "text": p50(q + ["a red circle"], code, runs),
        "--like PATH": p50(q + ["--like", str(like)], code, runs),
        "--image NEW": p50(q + ["--image", str(image)], code, runs),
    }


def breakdown(code: Path, runs: int) -> dict:
    """Fresh-process costs of the torch path (median of `runs`)."""
    snippets = {
        "python + import clipsearch.library": "import clipsearch.library",
        "import torch": "import torch",
        "import torch, open_clip": "import torch, open_clip",
        "import torch, open_clip + load_encoder('shapes')": "import torch, open_clip\n"
            "from clipsearch.encoders import load_encoder\nload_encoder('shapes')",
        "light image tower: load + embed one picture": "from PIL import Image\n"
            "from clipsearch.encoders import parse_model_spec\n"
            "from clipsearch.encoders.imagefast import load_image_encoder\n"
            "e = load_image_encoder(parse_model_spec('shapes'))\n"
            "e.embed_batch([e.preprocess(Image.new('RGB', (224, 224), (200, 40, 40)))])",
    }
    out = {}
    for name, src in snippets.items():
        out[name] = statistics.median(run(["-c", src], code)[0] for _ in range(runs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before", default="main", help="git ref to compare with ('' to skip)")
    ap.add_argument("--sample", type=Path, default=REPO.parent / "shared" / "shapes-sample")
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        like = args.sample / "images" / sorted(os.listdir(args.sample / "images"))[5]
        image = new_image(args.sample, tmp / "new-example.jpg")
        rows = {}
        make_library(REPO, args.sample / "images", tmp / "lib-now")
        rows["this tree"] = timings(REPO, tmp / "lib-now", like, image, args.runs)
        if args.before:
            before = tmp / "before"
            before.mkdir()
            rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.before], capture_output=True,
                                 text=True, check=True).stdout.strip()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "clipsearch"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            make_library(before, args.sample / "images", tmp / "lib-before")
            rows[f"{args.before} ({rev})"] = timings(before, tmp / "lib-before", like, image, args.runs)
        print(f"\ncold `clipsearch query` on the shapes sample ({len(os.listdir(args.sample / 'images'))} images, "
              f"--model shapes), p50 of {args.runs} new processes, seconds")
        cols = ["text", "--like PATH", "--image NEW"]
        print(f"  {'code':<24}" + "".join(f"{c:>16}" for c in cols))
        for name, r in rows.items():
            print(f"  {name:<24}" + "".join(f"{r[c]:>16.2f}" if r[c] is not None else f"{'(no such flag)':>16}"
                                            for c in cols))
        print(f"\nwhere the torch path's time goes (fresh processes, p50 of {args.runs}, seconds)")
        for name, secs in breakdown(REPO, args.runs).items():
            print(f"  {name:<52}{secs:>8.2f}")


if __name__ == "__main__":
    main()
