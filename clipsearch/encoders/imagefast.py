"""A light image path for example-image queries: a ResNet image tower in numpy, without torch or open_clip.

`clipsearch query --image PATH` with a new picture used to import torch and open_clip (with torchvision
and torch._dynamo: 5-6 s on this machine) and build the whole model, to embed one 96-pixel picture with
the demo model's small ResNet. This module computes the same function as open_clip's `ModifiedResNet`
(the three-convolution stem, anti-aliased Bottleneck blocks with eval-mode BatchNorm folded into the
convolutions, the attention pooling) in float32 numpy, on the image weights only, read from the
model's safetensors file; and the model's evaluation preprocessing (shortest-side resize, centre
crop, normalise) in Pillow and numpy. It agrees with open_clip's fp32 `encode_image` to float32
rounding (tested on real shapes images).

Only ModifiedResNet towers of checkpoint directories (the shipped `shapes` model and what `clipsearch
train` writes) with a "shortest" resize are handled; `load_image_encoder` returns None otherwise and
the caller uses the full model. Convolutions are im2col products: fine for a query's one picture,
not meant for indexing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import ModelSpec, l2_normalize
from ._common import CONFIG_NAME, SAFETENSORS_NAME, weights_label, weights_source

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_PREPROCESS_DEFAULTS = {"mode": "RGB", "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
                        "resize_mode": "shortest", "fill_color": 0}
_BN_EPS = 1e-5  # nn.BatchNorm2d's default, which ModifiedResNet keeps


def _resnet_cfg(model_cfg: dict) -> dict | None:
    """The ModifiedResNet settings of a model config (open_clip's CLIPVisionCfg defaults), or None."""
    vision = model_cfg.get("vision_cfg", {})
    if vision.get("timm_model_name") or not isinstance(vision.get("layers"), (list, tuple)):
        return None
    layers = [int(n) for n in vision["layers"]]
    if len(layers) != 4 or min(layers) < 1:
        return None
    width = int(vision.get("width", 768))
    head_width = int(vision.get("head_width", 64))
    image_size = vision.get("image_size", 224)
    if not isinstance(image_size, int):  # a (h, w) pair: not a case this path follows
        return None
    return {"layers": layers, "width": width, "heads": width * 32 // head_width, "image_size": image_size,
            "embed_dim": int(model_cfg["embed_dim"])}


def preprocess_config(conf: dict, image_size: int) -> dict:
    """The evaluation preprocessing the full loader uses: open_clip's PreprocessCfg defaults (size = the
    tower's image size) overlaid with the checkpoint's preprocess_cfg (None meaning "not set")."""
    pp = {"size": image_size, **_PREPROCESS_DEFAULTS}
    pp.update({k: v for k, v in (conf.get("preprocess_cfg") or {}).items() if k in pp and v is not None})
    return pp


def load_image_encoder(spec: ModelSpec, known: dict | None = None) -> "NumpyImageEncoder | None":
    """An image-only encoder for `spec`, or None when this path does not cover the model. `known`: the
    library's record of the weights (its hash is trusted when the file's stat identity is unchanged)."""
    if spec.kind not in ("builtin", "dir"):
        return None
    cfg_path = Path(spec.path) / CONFIG_NAME
    weights = Path(spec.path) / SAFETENSORS_NAME
    if not cfg_path.is_file() or not weights.is_file():
        return None
    try:
        conf = json.loads(cfg_path.read_text())
        model_cfg = conf["model_cfg"]
        rcfg = _resnet_cfg(model_cfg)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if rcfg is None:
        return None
    pp = preprocess_config(conf, rcfg["image_size"])
    size = pp["size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            return None
        size = size[0]
    if pp["resize_mode"] != "shortest" or pp["interpolation"] not in ("bicubic", "bilinear") or pp["mode"] != "RGB" \
            or int(size) != rcfg["image_size"]:
        return None
    try:
        params = _read_visual_weights(weights)
        tower = _ResNetTower(params, rcfg)
    except (OSError, KeyError, TypeError, ValueError):
        return None
    extra = conf.get("clipsearch", {})
    arch = extra.get("arch", model_cfg.get("name", "custom"))
    return NumpyImageEncoder(spec.name, arch, rcfg["embed_dim"], weights_source(weights, known=known), pp, tower)


def _read_visual_weights(path: Path) -> dict:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for k in f.keys():
            if not k.startswith("visual.") or k.endswith("num_batches_tracked"):
                continue
            a = f.get_tensor(k)
            if a.dtype not in (np.float32, np.float16, np.float64):
                raise ValueError(f"{k} has dtype {a.dtype}")
            out[k[len("visual."):]] = a.astype(np.float32)
    return out


class NumpyImageEncoder:
    """preprocess + embed_batch (the two the query path uses), the same function as the model's image tower."""

    def __init__(self, name: str, arch: str, dim: int, source: dict, preprocess_cfg: dict, tower: "_ResNetTower"):
        self.name = name
        self.arch = arch
        self.dim = dim
        self.weights_source = source  # _common.weights_source: the file read, its stat identity and sha256
        self.weights_id = weights_label(source["sha256"])
        self.preprocess_cfg = preprocess_cfg
        self.image_size = tower.image_size
        self.tower = tower
        self._mean = np.asarray(preprocess_cfg["mean"], np.float32).reshape(3, 1, 1)
        self._std = np.asarray(preprocess_cfg["std"], np.float32).reshape(3, 1, 1)

    @property
    def fingerprint(self) -> dict:
        """The part of the library's fingerprint this tower vouches for (identity.check_text_fingerprint)."""
        return {"model": self.name, "arch": self.arch, "weights": self.weights_id, "dim": self.dim}

    def preprocess(self, image) -> np.ndarray:
        """open_clip's evaluation transform for resize_mode "shortest", as a CHW float32 array."""
        from PIL import Image

        if image.mode != "RGB":
            image = image.convert("RGB")
        size = self.image_size
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)  # torchvision's rounding (truncation)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        resample = Image.BICUBIC if self.preprocess_cfg["interpolation"] == "bicubic" else Image.BILINEAR
        image = image.resize((new_w, new_h), resample)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        a = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)).astype(np.float32)
        np.divide(a, np.float32(255), out=a)
        np.subtract(a, self._mean, out=a)
        np.divide(a, self._std, out=a)
        return a

    def embed_batch(self, arrays) -> np.ndarray:
        arrays = list(arrays)
        if not arrays:
            return np.empty((0, self.dim), np.float32)
        x = np.stack([np.asarray(a, np.float32) for a in arrays])
        return l2_normalize(self.tower(x))

    def embed_images(self, images) -> np.ndarray:
        return self.embed_batch([self.preprocess(im) for im in images])


class _ResNetTower:
    """open_clip.modified_resnet.ModifiedResNet in eval mode, channels last, BatchNorm folded."""

    def __init__(self, params: dict, cfg: dict):
        p = _Taken(params)
        self.image_size = cfg["image_size"]
        self.heads = cfg["heads"]
        self.stem = [_fold(p[f"conv{i}.weight"], p, f"bn{i}") for i in (1, 2, 3)]
        self.blocks = []
        for li, n in enumerate(cfg["layers"], start=1):
            for bi in range(n):
                b = f"layer{li}.{bi}."
                down = (_fold(p[b + "downsample.0.weight"], p, b + "downsample.1")
                        if b + "downsample.0.weight" in p else None)
                self.blocks.append({
                    "stride": 2 if (li > 1 and bi == 0) else 1,
                    "c1": _fold(p[b + "conv1.weight"], p, b + "bn1"),
                    "c2": _fold(p[b + "conv2.weight"], p, b + "bn2"),
                    "c3": _fold(p[b + "conv3.weight"], p, b + "bn3"),
                    "down": down,
                })
        a = "attnpool."
        self.pos = p[a + "positional_embedding"]
        self.q, self.qb = p[a + "q_proj.weight"], p[a + "q_proj.bias"]
        self.k, self.kb = p[a + "k_proj.weight"], p[a + "k_proj.bias"]
        self.v, self.vb = p[a + "v_proj.weight"], p[a + "v_proj.bias"]
        self.c, self.cb = p[a + "c_proj.weight"], p[a + "c_proj.bias"]
        side = self.image_size // 32
        if self.pos.shape[0] != side * side + 1:
            raise ValueError("the attention pool's positions do not fit the image size")
        unused = set(p) - p.taken
        if unused:  # a tower with parts this one lacks would compute something else
            raise ValueError(f"weights this tower does not know: {sorted(unused)[:3]}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # NCHW -> NHWC
        (w1, b1), (w2, b2), (w3, b3) = self.stem
        x = _relu(_conv3x3(x, w1, b1, stride=2))
        x = _relu(_conv3x3(x, w2, b2))
        x = _relu(_conv3x3(x, w3, b3))
        x = _avgpool(x, 2)
        for blk in self.blocks:
            out = _relu(_conv1x1(x, *blk["c1"]))
            out = _relu(_conv3x3(out, *blk["c2"]))
            if blk["stride"] > 1:
                out = _avgpool(out, blk["stride"])
            out = _conv1x1(out, *blk["c3"])
            if blk["down"] is not None:
                idn = _avgpool(x, blk["stride"]) if blk["stride"] > 1 else x
                idn = _conv1x1(idn, *blk["down"])
            else:
                idn = x
            x = _relu(out + idn)
        return self._attnpool(x)

    def _attnpool(self, x: np.ndarray) -> np.ndarray:
        B, H, W, C = x.shape
        t = x.reshape(B, H * W, C)
        t = np.concatenate([t.mean(axis=1, keepdims=True), t], axis=1) + self.pos  # (B, HW+1, C)
        hd = C // self.heads
        q = (t[:, 0] @ self.q.T + self.qb) * np.float32(hd ** -0.5)  # only the pooled token's output is kept
        k = t @ self.k.T + self.kb
        v = t @ self.v.T + self.vb
        qh = q.reshape(B, self.heads, 1, hd)
        kh = k.reshape(B, -1, self.heads, hd).transpose(0, 2, 1, 3)
        vh = v.reshape(B, -1, self.heads, hd).transpose(0, 2, 1, 3)
        s = qh @ kh.transpose(0, 1, 3, 2)  # (B, heads, 1, HW+1)
        s = s - s.max(-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(-1, keepdims=True)
        o = (s @ vh).reshape(B, C)
        return np.ascontiguousarray(o @ self.c.T + self.cb, dtype=np.float32)


class _Taken(dict):
    """A dict that remembers which keys were read."""

    def __init__(self, *a):
        super().__init__(*a)
        self.taken: set = set()

    def __getitem__(self, key):
        self.taken.add(key)
        return super().__getitem__(key)


def _fold(w: np.ndarray, p: dict, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """A bias-free convolution followed by eval-mode BatchNorm as one convolution with a bias, its weight in
    im2col layout (kh * kw * in, out)."""
    scale = p[bn + ".weight"] / np.sqrt(p[bn + ".running_var"] + np.float32(_BN_EPS))
    bias = p[bn + ".bias"] - p[bn + ".running_mean"] * scale
    o, i, kh, kw = w.shape
    w = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0).reshape(kh * kw * i, o)  # rows ordered (kh, kw, in)
    return np.ascontiguousarray(w, np.float32), bias.astype(np.float32)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


def _conv1x1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x @ w + b


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1) -> np.ndarray:
    """A 3x3 convolution with padding 1, as one product of the (kh, kw, in) windows with the weights."""
    B, H, W, C = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    cols = np.empty((B, Ho, Wo, 3, 3, C), np.float32)
    for dy in range(3):
        for dx in range(3):
            cols[:, :, :, dy, dx] = xp[:, dy:dy + stride * (Ho - 1) + 1:stride, dx:dx + stride * (Wo - 1) + 1:stride]
    return cols.reshape(B, Ho, Wo, 9 * C) @ w + b


def _avgpool(x: np.ndarray, k: int) -> np.ndarray:
    """nn.AvgPool2d(k): k x k means with stride k, a ragged edge dropped."""
    B, H, W, C = x.shape
    H2, W2 = H // k, W // k
    x = x[:, :H2 * k, :W2 * k]
    return x.reshape(B, H2, k, W2, k, C).mean(axis=(2, 4), dtype=np.float32)
