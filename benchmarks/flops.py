"""How close the image encoder runs to this machine's limit.

    python benchmarks/flops.py

Prints: the FLOPs of the ViT-B-32 image tower per image (counted by torch's FlopCounterMode, a
multiply-add = 2 FLOPs); the measured matmul peak of this machine in fp32 and bf16 (large square
matmuls, torch, all cores); and the image tower's throughput, fp32 against bf16 weights at batch 1
and 32, side by side, as img/s, GFLOP/s and share of the matching peak. Set --threads to match what
the indexer uses (default: all cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ARCH, machine, versions  # noqa: E402


def best_rate(fn, flops: float, seconds: float = 3.0, min_reps: int = 3) -> float:
    fn()  # warm up (oneDNN primitive creation, page faults)
    best = 0.0
    reps = 0
    end = time.perf_counter() + seconds
    while reps < min_reps or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = max(best, flops / (time.perf_counter() - t))
        reps += 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=4.0, help="time per measurement (best of the repeats)")
    args = ap.parse_args()

    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"versions: {versions()}; torch threads: {torch.get_num_threads()}")

    model = open_clip.create_model(ARCH, pretrained=None).eval()
    x1 = torch.randn(1, 3, 224, 224)
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel is invisible to the counter
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.encode_image(x1)
    torch.backends.mha.set_fastpath_enabled(True)
    flops_img = fc.get_total_flops()
    print(f"\n{ARCH} image tower: {flops_img / 1e9:.2f} GFLOP per image ({flops_img / 2e9:.2f} GMAC)")

    print("\nmatmul peak (best of repeated square matmuls):")
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for n in (1024, 2048, 4096):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            with torch.inference_mode():
                best = max(best, best_rate(lambda: torch.mm(a, b), 2 * n ** 3, args.seconds / 3))
        peaks[name] = best
        print(f"  {name}: {best / 1e9:7.1f} GFLOP/s")
    print(f"  bf16 / fp32: x{peaks['bf16'] / peaks['fp32']:.2f}")
    # int8 (not used by clipsearch: what quantised matmuls would offer this CPU, for the README's argument)
    try:
        best = 0.0
        for n in (1024, 2048):
            a = torch.randint(-127, 128, (n, n), dtype=torch.int8)
            b = torch.randint(-127, 128, (n, n), dtype=torch.int8)
            with torch.inference_mode():
                best = max(best, best_rate(lambda: torch._int_mm(a, b), 2 * n ** 3, args.seconds / 3))
        print(f"  int8 (torch._int_mm, int32 sums; not used by clipsearch): {best / 1e9:7.1f} GOP/s, "
              f"x{best / peaks['bf16']:.2f} bf16")
    except (RuntimeError, AttributeError) as e:
        print(f"  int8: torch._int_mm unavailable here ({type(e).__name__})")

    print(f"\n{ARCH} image tower throughput (inference mode, random inputs):")
    print("  fp32 = open_clip as built; bf16-all = model.to(bfloat16); bf16-blocks = what clipsearch runs for")
    print("  --precision bf16 (attention + MLP in bf16, residual stream/LayerNorms/embeddings fp32)")
    print(f"  {'precision':<12} {'batch':>5} {'img/s':>8} {'GFLOP/s':>9} {'of peak':>8}")
    import copy

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from clipsearch.encoders.openclip import _bf16_blocks

    variants = {"fp32": (model, torch.float32, "fp32"),
                "bf16-all": (copy.deepcopy(model).to(torch.bfloat16), torch.bfloat16, "bf16")}
    mixed = copy.deepcopy(model)
    _bf16_blocks(mixed)
    variants["bf16-blocks"] = (mixed, torch.float32, "bf16")
    rates = {}
    for batch in (1, 32):
        for name, (m, in_dtype, peak) in variants.items():
            x = torch.randn(batch, 3, 224, 224, dtype=in_dtype)
            with torch.inference_mode():
                ips = best_rate(lambda: m.encode_image(x), batch, args.seconds)
            rates[(name, batch)] = ips
            print(f"  {name:<12} {batch:>5} {ips:>8.2f} {ips * flops_img / 1e9:>9.1f} "
                  f"{100 * ips * flops_img / peaks[peak]:>7.0f}%", flush=True)
    for batch in (1, 32):
        print(f"  at batch {batch}: bf16-all / fp32 x{rates[('bf16-all', batch)] / rates[('fp32', batch)]:.2f}, "
              f"bf16-blocks / fp32 x{rates[('bf16-blocks', batch)] / rates[('fp32', batch)]:.2f}")
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        for name in ("bf16-all", "bf16-blocks"):
            m, in_dtype, _ = variants[name]
            v = torch.nn.functional.normalize(m.encode_image(x.to(in_dtype)).float(), dim=-1)
            print(f"  cosine {name} vs fp32 embeddings (same inputs): min {float((v * ref).sum(-1).min()):.6f}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
