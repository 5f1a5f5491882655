"""Shared helpers for the benchmarks: a ViT-B-32 checkpoint with random weights, machine facts, timing."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ARCH = "ViT-B-32"
DEFAULT_WORK = Path(os.environ.get("CLIPSEARCH_BENCH_DIR", "/tmp/clipsearch-bench"))


def vit_b32_weights(work: Path) -> Path:
    """ViT-B-32 with random weights (speed does not depend on their values), saved once as safetensors."""
    path = work / "vit-b-32-random.safetensors"
    if not path.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model(ARCH, pretrained=None)
        work.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    return path


def machine() -> str:
    cpu = "?"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores ({' '.join(simd) or 'no AVX'}), Python {platform.python_version()}, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def versions() -> str:
    out = []
    for mod in ("torch", "open_clip", "faiss", "PIL", "numpy"):
        try:
            m = __import__(mod)
            out.append(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            pass
    return ", ".join(out)


def run_child(args: list[str], env: dict | None = None) -> dict:
    """Run `python args...` in a fresh process; it prints one JSON object as its last line."""
    proc = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, env={**os.environ, **(env or {})})
    if proc.returncode:
        raise SystemExit(f"benchmark child {args} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def now() -> float:
    return time.perf_counter()
