"""The light text tower's transformer run by ONNX Runtime, for processes that answer many queries.

A query's text tower multiplies a handful of token rows by 38 M float32 weights (151 MB for ViT-B-32).
OpenBLAS's GEMM is slow at that shape: with 10 rows it streams the weights at 4.3-4.9 GB/s on one thread
and 7.4-9.6 on two, where its matrix-vector product reaches 12-13.5 and 17-24 (benchmarks/text_products.py,
2 cores of an AMD EPYC). ONNX Runtime packs each weight matrix once, when its session is built, for its own
kernels (MLAS), and then runs the same products 1.6-2.8x faster than the GEMM; a whole text costs about half
(benchmarks/query_latency.py prints both engines side by side). The set-up costs ~1 s
and ~200 MB (the packed copy) once, so a one-off `clipsearch query` keeps numpy and `clipsearch serve` builds
this (Reader's `text_engine`). The weights are handed to the session from the encoder's own arrays, not
serialized into the model (that took ~1 s more and left copies behind).

The graph computes what NumpyTextEncoder.encode_tokens computes between the embeddings and the final
LayerNorm, in float32 (its products sum in another order, so the two agree to float32 rounding, tested).
The session has its own threads, one per core up to four, which sleep when idle instead of spinning
(spinning threads made queries slower when other processes kept the cores busy; see _blas.py); nothing
process-wide is set, and the session logs only errors.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

log = logging.getLogger(__name__)

MAX_THREADS = 4  # the products are memory bound: more threads than this add little


def build(encoder) -> "OnnxTower | None":
    """The transformer of `encoder` (a NumpyTextEncoder) as an ONNX Runtime session; None when onnxruntime
    or onnx is not installed or the graph cannot be built (the numpy path then stays in use)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        log.debug("text tower stays in numpy: %s", e)
        return None
    try:
        return OnnxTower(encoder)
    except _build_errors() as e:
        log.debug("text tower stays in numpy: the ONNX Runtime session could not be built: %s", e)
        return None


def _build_errors() -> tuple:
    """What a failed graph check or session build raises: onnxruntime's own exception classes (they derive
    from Exception directly), and ValueError (onnx's checks, a protobuf over its size limit)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NotImplemented", "RuntimeException")
    return tuple(getattr(state, n) for n in names if hasattr(state, n)) + (ValueError,)


class OnnxTower:
    """run(x, mask): the transformer blocks and the final LayerNorm of a CLIP text tower."""

    def __init__(self, encoder):
        model, weights = _graph(encoder)
        self.threads = _threads()
        self._session, self._weights = session(model, weights, self.threads)
        self._arrays = weights  # the session reads these; they must live as long as it does

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """x: (B, n, width) float32 token plus position embeddings; mask: (n, n) additive causal mask."""
        return self._session.run(None, {"x": np.ascontiguousarray(x, np.float32),
                                        "mask": np.ascontiguousarray(mask, np.float32)})[0]


def session(model: bytes, weights: dict[str, np.ndarray], threads: int):
    """An ONNX Runtime CPU session of `model` whose external weights (external_weight) are read from `weights`'
    arrays in place, with `threads` threads that sleep when idle, logging only errors; and the OrtValues it
    reads, which must outlive it (as must the arrays)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only, for this session
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in weights.values()]  # views of the arrays
    opts.add_external_initializers(list(weights), values)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]), values


def external_weight(name: str, w: np.ndarray):
    """The model's placeholder for float32 matrix `w`: external data "in memory", which session() replaces
    with the array itself."""
    from onnx import TensorProto

    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=w.shape)
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="in-memory")
    return t


def _threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def _graph(enc) -> tuple[bytes, dict]:
    """The serialized ONNX model of enc's blocks (opset 17: LayerNormalization), and its weight matrices by
    name: the model names them as external data, which the session takes from these arrays in memory (no
    copy; serializing 151 MB into the model took ~1 s and left copies behind)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, weights = [], [], {}
    names = iter(range(1 << 30))

    def const(value: np.ndarray) -> str:
        name = f"c{next(names)}"
        inits.append(numpy_helper.from_array(np.array(value, order="C"), name))  # 0-d stays 0-d
        return name

    def matrix(w: np.ndarray) -> str:
        name = f"w{next(names)}"
        weights[name] = w = np.ascontiguousarray(w, np.float32)  # the encoder's own array when it is one
        inits.append(external_weight(name, w))
        return name

    def op(kind: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or f"t{next(names)}"
        nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def layer_norm(x: str, wb: tuple, out: str | None = None) -> str:
        return op("LayerNormalization", x, const(wb[0].astype(np.float32)), const(wb[1].astype(np.float32)),
                  axis=-1, epsilon=1e-5, out=out)

    def linear(x: str, w: np.ndarray, b: np.ndarray) -> str:  # (B, n, in) -> (B, n, out); w: torch's (out, in)
        rows = op("Reshape", x, const(np.array([-1, w.shape[1]], np.int64)))  # Gemm takes 2-D operands
        flat = op("Gemm", rows, matrix(w), const(np.asarray(b, np.float32)), transB=1)
        shape = op("Concat", op("Shape", x, end=-1), const(np.array([w.shape[0]], np.int64)), axis=0)
        return op("Reshape", flat, shape)

    width = enc.blocks[0]["out"].shape[0]
    heads = enc.heads
    hd = width // heads
    split_heads = const(np.array([0, 0, 3, heads, hd], np.int64))
    merge_heads = const(np.array([0, 0, width], np.int64))
    scale = const(np.array(1.0 / math.sqrt(hd), np.float32))
    half, one = const(np.array(0.5, np.float32)), const(np.array(1.0, np.float32))
    inv_sqrt2, quick = const(np.array(1.0 / math.sqrt(2.0), np.float32)), const(np.array(1.702, np.float32))
    which = [const(np.array(i, np.int64)) for i in range(3)]

    x = "x"
    for blk in enc.blocks:
        h = layer_norm(x, blk["ln1"])
        qkv = op("Transpose", op("Reshape", linear(h, blk["qkv"], blk["qkv_b"]), split_heads), perm=[2, 0, 3, 1, 4])
        q, k, v = (op("Gather", qkv, which[i], axis=0) for i in range(3))  # each (B, heads, n, hd)
        s = op("Add", op("Mul", op("MatMul", q, op("Transpose", k, perm=[0, 1, 3, 2])), scale), "mask")
        o = op("MatMul", op("Softmax", s, axis=-1), v)
        a = linear(op("Reshape", op("Transpose", o, perm=[0, 2, 1, 3]), merge_heads), blk["out"], blk["out_b"])
        if blk["ls1"] is not None:
            a = op("Mul", a, const(blk["ls1"].astype(np.float32)))
        x = op("Add", x, a)
        h = linear(layer_norm(x, blk["ln2"]), blk["fc"], blk["fc_b"])
        if enc.quick_gelu:
            h = op("Mul", h, op("Sigmoid", op("Mul", h, quick)))
        else:
            h = op("Mul", op("Mul", h, half), op("Add", one, op("Erf", op("Mul", h, inv_sqrt2))))
        h = linear(h, blk["proj"], blk["proj_b"])
        if blk["ls2"] is not None:
            h = op("Mul", h, const(blk["ls2"].astype(np.float32)))
        x = op("Add", x, h)
    layer_norm(x, enc.ln_final, out="y")
    graph = helper.make_graph(
        nodes, "clip_text_tower",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", width]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["tokens", "tokens"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipsearch")
    model.ir_version = 8  # readable by every onnxruntime that knows opset 17
    return model.SerializeToString(), weights
