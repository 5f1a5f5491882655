"""A light text path for queries: the model's text tower in numpy, without importing torch or open_clip.

A cold `clipsearch query` used to spend ~6-7 s importing torch, torchvision (pulled in by open_clip)
and torch._dynamo, and ~2 s building and randomly initialising the whole model before loading its
weights, all to embed one short text. This module computes the same function as open_clip's
`CLIP.encode_text` (token and position embeddings, pre-LN causal transformer blocks with
nn.MultiheadAttention, GELU or QuickGELU MLP, optional LayerScale, final LayerNorm, pooling at the
end-of-text token, projection) in float32 numpy, on the text weights only, read from the model's
safetensors file. The context is cut after the end-of-text token, which is exact for a causal tower.
It agrees with open_clip's fp32 text tower to float32 rounding (cosine >= 0.99999, tested).

Only standard CLIP text towers from safetensors checkpoints are handled (None otherwise, and the
caller uses the full model): checkpoint directories (including the shipped `shapes` model and its
reduced vocabulary), `ARCH:/path/weights.safetensors`, and the weights file a library recorded when a
full load resolved them (`load_text_encoder_from_record`; how ARCH:TAG models get here, identity.py).
"""

from __future__ import annotations

import gzip
import html
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import ModelSpec, l2_normalize
from ._common import (
    SAFETENSORS_NAME,
    open_clip_dir,
    read_checkpoint_config,
    remap_token_ids,
    weights_label,
    weights_source,
)

# text_cfg options this implementation follows; any other value (or key) means: use open_clip itself
_TEXT_DEFAULTS = {
    "hf_tokenizer_name": None, "tokenizer_mode": None, "embed_cls": False, "no_causal_mask": False,
    "final_ln_after_pool": False, "proj_type": "linear", "output_tokens": False, "act_kwargs": None,
    "norm_kwargs": None, "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "hf_model_name": None, "pad_id": 0,
}
_TEXT_FREE = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value", "pool_type",
              "eos_id", "proj_bias", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "tokenizer_kwargs"}


def _supported(model_cfg: dict) -> bool:
    if model_cfg.get("custom_text"):
        return False
    text = model_cfg.get("text_cfg", {})
    for k, v in text.items():
        if k in _TEXT_FREE:
            continue
        if k not in _TEXT_DEFAULTS or v != _TEXT_DEFAULTS[k]:
            return False
    if text.get("tokenizer_kwargs") not in (None, {}, {"clean": "lower"}):
        return False
    return text.get("pool_type", "argmax") in ("argmax", "eos") and not text.get("hf_model_name")


def load_text_encoder(spec: ModelSpec, known: dict | None = None) -> "NumpyTextEncoder | None":
    """The text tower of a local model (a checkpoint directory, the shipped `shapes`, ARCH:/path.safetensors),
    or None when this path does not cover it. `known`: the library's record of the weights (its hash is
    trusted when the file's stat identity is unchanged)."""
    token_ids = None
    if spec.kind in ("builtin", "dir"):
        conf = read_checkpoint_config(spec.path)
        weights = Path(spec.path) / SAFETENSORS_NAME
        if conf is None or not weights.is_file():
            return None
        model_cfg = conf.get("model_cfg", {})
        extra = conf.get("clipsearch", {})
        arch, token_ids = extra.get("arch", model_cfg.get("name", "custom")), extra.get("token_ids")
    elif spec.kind == "file" and Path(spec.path).suffix == ".safetensors":
        oc = open_clip_dir()
        cfg_path = oc / "model_configs" / f"{spec.arch}.json" if oc else None
        if cfg_path is None or not cfg_path.is_file():
            return None
        model_cfg = json.loads(cfg_path.read_text())
        weights, arch = Path(spec.path), spec.arch
    else:  # ARCH:TAG and hf-hub: only through the library's record of where a full load found them
        return None
    text = {"arch": arch, "model_cfg": model_cfg, "token_ids": token_ids}
    return _make(spec.name, text, weights, known)


def load_text_encoder_from_record(name: str, record: dict) -> "NumpyTextEncoder | None":
    """The text tower of the weights a library recorded (`record`: _common.weights_source, with its "text"
    config), read from the recorded path; None when the record has no text tower or the file is gone."""
    text = record.get("text")  # only recorded for safetensors files (a Hugging Face blob has no suffix)
    path = record.get("path")
    if not text or not path or not Path(path).is_file():
        return None
    return _make(name, text, Path(path), record)


def _make(name: str, text: dict, weights: Path, known: dict | None) -> "NumpyTextEncoder | None":
    model_cfg = text.get("model_cfg") or {}
    if not _supported(model_cfg):
        return None
    oc = open_clip_dir()
    bpe = oc / "bpe_simple_vocab_16e6.txt.gz" if oc else None
    if bpe is None or not bpe.is_file():
        return None
    from safetensors import SafetensorError

    try:
        params = _read_text_weights(weights)
    except (OSError, KeyError, TypeError, ValueError, SafetensorError):
        return None
    if params is None:
        return None
    source = weights_source(weights, text=text, known=known)
    return NumpyTextEncoder(name, text.get("arch") or "custom", model_cfg, params, source, str(bpe),
                            text.get("token_ids"))


class _Rows:
    """The token embedding table, read row by row from the checkpoint as queries need them (it is 100 MB
    for a 49,408-token vocabulary; a query uses a handful of rows)."""

    def __init__(self, path: Path, key: str, shape: tuple[int, int]):
        self.path, self.key, self.shape = str(path), key, shape
        self._rows: dict[int, np.ndarray] = {}

    def __getitem__(self, tokens: np.ndarray) -> np.ndarray:
        missing = sorted({int(t) for t in np.unique(tokens)} - set(self._rows))
        if missing:
            from safetensors import safe_open

            with safe_open(self.path, framework="numpy") as f:
                table = f.get_slice(self.key)
                for t in missing:
                    self._rows[t] = np.asarray(table[t:t + 1], dtype=np.float32)[0]
        flat = np.stack([self._rows[int(t)] for t in tokens.reshape(-1)])
        return flat.reshape(*tokens.shape, self.shape[1])


def _read_text_weights(path: Path) -> dict | None:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for k in f.keys():
            if k.startswith(("visual.", "logit_")):
                continue
            if k == "token_embedding.weight":
                table = f.get_slice(k)
                if table.get_dtype() not in ("F32", "F16"):
                    return None
                out[k] = _Rows(path, k, tuple(table.get_shape()))
                continue
            a = f.get_tensor(k)
            if a.dtype not in (np.float32, np.float16):
                return None
            out[k] = a if a.dtype == np.float32 else a.astype(np.float32)  # BLAS takes the transposed views as they are
    return out


class NumpyTextEncoder:
    """embed_texts only: unit float32 rows, the same function as the model's text tower."""

    def __init__(self, name: str, arch: str, model_cfg: dict, params: dict, source: dict, bpe_path: str,
                 token_ids: list[int] | None = None):
        text = model_cfg.get("text_cfg", {})
        self.name = name
        self.arch = arch
        self.dim = int(model_cfg["embed_dim"])
        self.weights_source = source  # _common.weights_source: the file read, its stat identity and sha256
        self.weights_id = weights_label(source["sha256"])
        self.context_length = int(text.get("context_length", 77))
        self.heads = int(text.get("heads", 8))
        self.layers = int(text.get("layers", 12))
        self.pool_type = text.get("pool_type", "argmax")
        self.eos_id = int(text.get("eos_id", 2))
        self.quick_gelu = bool(model_cfg.get("quick_gelu", False))
        self.tokenizer = _tokenizer(bpe_path)
        self._token_ids = [int(t) for t in token_ids] if token_ids else None
        p = params
        self.tok = p["token_embedding.weight"]
        self.pos = p["positional_embedding"]
        self.blocks = []
        for i in range(self.layers):
            b = f"transformer.resblocks.{i}."
            self.blocks.append({
                "ln1": (p[b + "ln_1.weight"], p[b + "ln_1.bias"]),
                "qkv": p[b + "attn.in_proj_weight"], "qkv_b": p[b + "attn.in_proj_bias"],
                "out": p[b + "attn.out_proj.weight"], "out_b": p[b + "attn.out_proj.bias"],
                "ls1": p.get(b + "ls_1.gamma"), "ls2": p.get(b + "ls_2.gamma"),
                "ln2": (p[b + "ln_2.weight"], p[b + "ln_2.bias"]),
                "fc": p[b + "mlp.c_fc.weight"], "fc_b": p[b + "mlp.c_fc.bias"],
                "proj": p[b + "mlp.c_proj.weight"], "proj_b": p[b + "mlp.c_proj.bias"],
            })
        self.ln_final = (p["ln_final.weight"], p["ln_final.bias"])
        if "text_projection.weight" in p:  # nn.Linear(width, dim[, bias])
            self.proj = p["text_projection.weight"].T
            self.proj_b = p.get("text_projection.bias")
        else:
            self.proj = p.get("text_projection")
            self.proj_b = None
        self.engine = "numpy"
        self._onnx = None

    def use_onnxruntime(self) -> bool:
        """Run the transformer with ONNX Runtime from now on (textonnx.py: ~2x faster per query; ~1 s and a
        packed copy of the weights to set up). False, and numpy as before, when onnxruntime is not installed
        or cannot run this tower."""
        if self._onnx is None:
            from . import textonnx

            tower = textonnx.build(self)
            if tower is None:
                return False
            self._onnx, self.engine = tower, "onnxruntime"
        return True

    def tokenize(self, texts) -> np.ndarray:
        tokens = self.tokenizer(list(texts), self.context_length)
        if self._token_ids is not None:
            tokens = remap_token_ids(tokens, self._token_ids)
        return tokens

    @property
    def fingerprint(self) -> dict:
        """The part of the library's fingerprint a text tower can vouch for (no image preprocessing)."""
        return {"model": self.name, "arch": self.arch, "weights": self.weights_id, "dim": self.dim}

    def embed_texts(self, texts) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dim), np.float32)
        from .._blas import query_threads

        with query_threads():  # memory-bound small products: two cores help only when the other is idle (_blas.py)
            return l2_normalize(self.encode_tokens(self.tokenize(texts)))

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        if self.pool_type == "argmax":
            ends = tokens.argmax(axis=-1)
        else:
            ends = (tokens == self.eos_id).argmax(axis=-1)
        n = int(ends.max()) + 1
        tokens = tokens[:, :n]
        x = self.tok[tokens] + self.pos[:n]  # (B, n, width)
        mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        if self._onnx is not None:
            return self._pool(self._onnx.run(x, mask), ends)
        for blk in self.blocks:
            h = _layer_norm(x, *blk["ln1"])
            a = _attention(h, blk, self.heads, mask)
            x = x + (a * blk["ls1"] if blk["ls1"] is not None else a)
            h = _layer_norm(x, *blk["ln2"])
            h = _linear(h, blk["fc"], blk["fc_b"])
            h = _quick_gelu(h) if self.quick_gelu else _gelu(h)
            h = _linear(h, blk["proj"], blk["proj_b"])
            x = x + (h * blk["ls2"] if blk["ls2"] is not None else h)
        return self._pool(_layer_norm(x, *self.ln_final), ends)

    def _pool(self, x: np.ndarray, ends: np.ndarray) -> np.ndarray:
        pooled = x[np.arange(x.shape[0]), ends]
        if self.proj is not None:
            pooled = pooled @ self.proj
            if self.proj_b is not None:
                pooled = pooled + self.proj_b
        return np.ascontiguousarray(pooled, dtype=np.float32)


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x @ w.T + b with w in torch's (out, in) layout, computed as w @ x.T: BLAS streams the weights
    row by row, ~30% faster than x @ w.T for the few rows of a query (measured)."""
    x2 = x.reshape(-1, x.shape[-1])
    return (w @ x2.T).T.reshape(*x.shape[:-1], w.shape[0]) + b


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(-1, keepdims=True)
    return d / np.sqrt(var + eps) * w + b


def _attention(h: np.ndarray, blk: dict, heads: int, mask: np.ndarray) -> np.ndarray:
    B, n, D = h.shape
    hd = D // heads
    qkv = _linear(h, blk["qkv"], blk["qkv_b"])  # (B, n, 3D)
    q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(B, n, heads, hd).transpose(0, 2, 1, 3) for i in range(3))
    s = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / math.sqrt(hd)) + mask
    s = s - s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(-1, keepdims=True)
    o = (s @ v).transpose(0, 2, 1, 3).reshape(B, n, D)
    return _linear(o, blk["out"], blk["out_b"])


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as nn.GELU(); erf evaluated in float64 to within 7e-8 of the true value."""
    return (0.5 * x * (1.0 + _erf(x.astype(np.float64) * (1.0 / math.sqrt(2.0))))).astype(np.float32)


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    return x * (1.0 / (1.0 + np.exp(-1.702 * x)))


# erf(x) ~= x P(x^2) / Q(x^2) on [-4, 4] (and +-1 beyond), the rational form float32 libraries use; the
# coefficients are the widely published ones (Eigen, XLA). Absolute error <= 6.5e-8 in float64 (tested
# against math.erf), i.e. float32 rounding of GELU's output. It replaced a 60-term series that took 40 %
# of a query's text encoding.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def _erf(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, -4.0, 4.0)
    x2 = x * x
    p = np.full_like(x2, _ERF_P[0])
    for c in _ERF_P[1:]:
        p *= x2
        p += c
    q = np.full_like(x2, _ERF_Q[0])
    for c in _ERF_Q[1:]:
        q *= x2
        q += c
    return x * p / q


# -- open_clip's SimpleTokenizer (clean="lower"), without torch -------------------------------------
@lru_cache(maxsize=4)
def _tokenizer(bpe_path: str) -> "_SimpleTokenizer":
    return _SimpleTokenizer(bpe_path)


def _bytes_to_unicode() -> dict:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class _SimpleTokenizer:
    """The same ids as open_clip.tokenizer.SimpleTokenizer (tested against it)."""

    def __init__(self, bpe_path: str):
        import regex

        self.byte_encoder = _bytes_to_unicode()
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab.extend("".join(m) for m in merges)
        special = ["<start_of_text>", "<end_of_text>"]
        vocab.extend(special)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {t: t for t in special}
        self.pat = regex.compile("|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                 regex.IGNORECASE)
        self.sot = self.encoder["<start_of_text>"]
        self.eot = self.encoder["<end_of_text>"]

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new.extend(word[i:])
                    break
                new.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        import ftfy

        text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).strip().lower()
        ids: list[int] = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: list[str], context_length: int) -> np.ndarray:
        out = np.zeros((len(texts), context_length), np.int64)
        for i, text in enumerate(texts):
            tokens = [self.sot] + self.encode(text) + [self.eot]
            if len(tokens) > context_length:
                tokens = tokens[:context_length]
                tokens[-1] = self.eot
            out[i, :len(tokens)] = tokens
        return out


def _pairs(word: tuple) -> set:
    return set(zip(word[:-1], word[1:]))
