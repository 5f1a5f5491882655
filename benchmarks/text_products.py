"""Why the server's text tower runs in ONNX Runtime: the weight products of one query, by engine.

    python benchmarks/text_products.py [--rows 10] [--repeats 30]

A text query multiplies a few token rows (a short text is ~10 tokens) by each of ViT-B-32's 48 text
tower weight matrices (151 MB of float32, far more than the caches, so every query streams them from
memory). This times those 48 products alone, as the weights' bytes per second, with the weights in
torch's (out, in) layout as the checkpoint stores them:

- OpenBLAS (numpy's) matrix-vector product, one row: what the memory gives a streaming kernel;
- OpenBLAS GEMM with --rows rows, the numpy text tower's products (textfast._linear);
- ONNX Runtime's Gemm on weights it packed at session build, the same rows (encoders/textonnx.py).

Each with 1 and with 2 threads (OpenBLAS's for this thread only, clipsearch/_blas.py; ONNX Runtime's for
its session). Random weights: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, versions  # noqa: E402

WIDTH, LAYERS = 512, 12  # ViT-B-32's text tower


def matrices(rng) -> list[np.ndarray]:
    shapes = [(3 * WIDTH, WIDTH), (WIDTH, WIDTH), (4 * WIDTH, WIDTH), (WIDTH, 4 * WIDTH)] * LAYERS
    return [rng.standard_normal(s, dtype=np.float32) * 0.02 for s in shapes]


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def onnx_products(ws: list[np.ndarray], threads: int):
    """A session of the 48 products alone, built as the server's text tower is (encoders/textonnx.py)."""
    from onnx import TensorProto, helper

    from clipsearch.encoders.textonnx import external_weight, session

    weights = {f"w{i}": w for i, w in enumerate(ws)}
    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["rows", w.shape[1]]) for i, w in enumerate(ws)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["rows", w.shape[0]]) for i, w in enumerate(ws)]
    nodes = [helper.make_node("Gemm", [f"x{i}", name], [f"y{i}"], transB=1) for i, name in enumerate(weights)]
    inits = [external_weight(name, w) for name, w in weights.items()]
    model = helper.make_model(helper.make_graph(nodes, "products", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return session(model.SerializeToString(), weights, threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10, help="token rows of the query (default 10)")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    from clipsearch._blas import _local_setter, _threads

    rng = np.random.default_rng(0)
    ws = matrices(rng)
    total = sum(w.nbytes for w in ws)
    xs = [rng.standard_normal((args.rows, w.shape[1]), dtype=np.float32) for w in ws]
    vs = [x[0].copy() for x in xs]
    print(f"\n48 products of the text tower ({total / 1e6:.0f} MB of weights), median of {args.repeats}:")
    if _local_setter() is None:
        print("  (OpenBLAS's per-thread setting is not available here: its rows use its default threads)")
    for threads in (1, 2):
        with _threads(threads):
            mv = median_time(lambda: [w @ v for w, v in zip(ws, vs)], args.repeats)
            mm = median_time(lambda: [w @ x.T for w, x in zip(ws, xs)], args.repeats)
        session, _keep = onnx_products(ws, threads)
        feeds = {f"x{i}": x for i, x in enumerate(xs)}
        ox = median_time(lambda: session.run(None, feeds), args.repeats)
        print(f"  {threads} thread{'s' if threads > 1 else ' '}: OpenBLAS matrix-vector (1 row)  {1e3 * mv:6.1f} ms  "
              f"{total / mv / 1e9:5.1f} GB/s")
        print(f"             OpenBLAS GEMM ({args.rows} rows)        {1e3 * mm:6.1f} ms  {total / mm / 1e9:5.1f} GB/s")
        print(f"             ONNX Runtime, packed ({args.rows} rows) {1e3 * ox:6.1f} ms  {total / ox / 1e9:5.1f} GB/s"
              f"   (x{mm / ox:.2f} OpenBLAS GEMM)")


if __name__ == "__main__":
    main()
