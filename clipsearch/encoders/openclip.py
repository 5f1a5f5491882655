"""The open_clip encoder: with checkpoint.py, mixed.py and preprocess.py, the only code that imports torch
and open_clip.

Loading is strict: a model either loads all of its weights or raises ModelUnavailableError; a randomly
initialised model is never returned for search. Every load knows the exact file its weights came from
and that file's sha256 (`LoadedClip.source`), which the library records and checks (identity.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ModelUnavailableError
from . import ModelSpec, l2_normalize
from ._common import find_weights, read_checkpoint_config, remap_token_ids, weights_label, weights_source
from .checkpoint import build_loaded, read_state_dict, unavailable
from .mixed import _bf16_blocks, _onednn_packing_works, mixable  # noqa: F401  (tests, benchmarks import them here)
from .preprocess import pil_preprocess

logger = logging.getLogger(__name__)

__all__ = ["LoadedClip", "OpenClipEncoder", "load_clip", "pil_preprocess", "read_state_dict", "resolve_device",
           "resolve_precision", "cpu_supports_bf16"]


@dataclass
class LoadedClip:
    """A model with everything needed to use it: its transform, tokenizer, and where its weights came from."""

    name: str
    model: object  # open_clip.CLIP
    preprocess: Callable  # PIL image -> CHW float tensor
    tokenize: Callable  # list[str] -> LongTensor (token remap applied)
    tokenizer: object  # open_clip's tokenizer (its .encode counts a text's tokens)
    context_length: int
    arch: str
    model_cfg: dict
    preprocess_cfg: dict
    source: dict  # _common.weights_source: the weights file, its stat identity, sha256, text tower config
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def weights_id(self) -> str:
        return weights_label(self.source["sha256"])

    def fingerprint(self) -> dict:
        """What the library compares: everything but `model` (the name, which may be a path that moves)."""
        return {
            "model": self.name,
            "arch": self.arch,
            "weights": self.weights_id,
            "dim": self.dim,
            "preprocess": {k: self.preprocess_cfg.get(k) for k in sorted(self.preprocess_cfg)},
            "normalized": True,
        }


def load_clip(spec: ModelSpec, *, device: str = "cpu", cache_dir: str | None = None) -> LoadedClip:
    """Load a model strictly, in eval mode, on `device`."""
    import open_clip

    extra: dict = {}
    if spec.kind in ("builtin", "dir"):
        conf = read_checkpoint_config(spec.path)
        if conf is None:
            raise unavailable(spec, f"{Path(spec.path) / 'open_clip_config.json'} is missing")
        model_cfg = conf["model_cfg"]
        extra = conf.get("clipsearch", {})
        weights = find_weights(spec.path)
        if weights is None:
            raise unavailable(spec, f"no weights file (open_clip_model.safetensors or .bin) in {spec.path}")
        model = build_loaded(model_cfg, spec.name, read_state_dict(weights), spec)
        pp = open_clip.transform.merge_preprocess_dict(
            open_clip.transform.PreprocessCfg(size=_size(model)), conf.get("preprocess_cfg", {}))
        arch = extra.get("arch", model_cfg.get("name", "custom"))
    elif spec.kind == "file":
        model_cfg = open_clip.get_model_config(spec.arch)
        if model_cfg is None:
            raise unavailable(spec, f"unknown architecture {spec.arch!r} (see open_clip.list_models())")
        weights = spec.path
        model = build_loaded(model_cfg, spec.arch, read_state_dict(weights), spec)
        pp = open_clip.transform.merge_preprocess_dict(
            open_clip.transform.PreprocessCfg(size=_size(model)), model_cfg.get("preprocess_cfg", {}))
        arch = spec.arch
    else:  # pretrained tag or hf-hub: open_clip's own resolution and cache (hub.py)
        model, weights = _load_from_hub(spec, cache_dir)
        model_cfg = (open_clip.get_model_config(spec.arch) if spec.kind == "pretrained" else None) or {}
        if not model_cfg:
            model_cfg = {"embed_dim": int(model.text_projection.shape[-1]) if getattr(model, "text_projection", None) is not None else 0}
        from open_clip.model import get_model_preprocess_cfg

        pp = dict(get_model_preprocess_cfg(model))
        arch = spec.arch
    token_ids = extra.get("token_ids")
    source = weights_source(weights, text=_text_tower(model, model_cfg, arch, token_ids, weights))
    model.eval()
    model.requires_grad_(False)
    if device != "cpu":
        model.to(device)
    pp = dict(pp)
    preprocess = pil_preprocess(pp) or open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(**{
        k: v for k, v in pp.items() if k in open_clip.transform.PreprocessCfg.__dataclass_fields__
    }), is_train=False)
    base_tok = open_clip.get_tokenizer(spec.arch) if spec.kind in ("pretrained", "file") else None
    if base_tok is None:
        base_tok = open_clip.SimpleTokenizer(context_length=int(model_cfg.get("text_cfg", {}).get("context_length", 77)))
    if token_ids:
        import torch

        def tokenize(texts):
            return torch.from_numpy(remap_token_ids(base_tok(list(texts)).numpy(), token_ids))
    else:
        def tokenize(texts):
            return base_tok(list(texts))
    context = int(getattr(base_tok, "context_length", None) or model_cfg.get("text_cfg", {}).get("context_length", 77))
    return LoadedClip(name=spec.name, model=model, preprocess=preprocess, tokenize=tokenize, tokenizer=base_tok,
                      context_length=context, arch=arch, model_cfg=model_cfg, preprocess_cfg=pp, source=source,
                      extra=extra)


def _load_from_hub(spec: ModelSpec, cache_dir: str | None):
    """(model, the weights file it was loaded from) for ARCH:TAG and hf-hub:org/repo."""
    import open_clip

    from . import hub

    if spec.kind == "pretrained":
        if spec.arch not in open_clip.list_models():
            raise unavailable(spec, f"unknown architecture {spec.arch!r}")
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        if spec.pretrained not in tags:
            raise unavailable(spec, f"unknown pretrained tag {spec.pretrained!r} for {spec.arch} (known: {', '.join(tags) or 'none'})")
    weights = hub.resolve(spec, cache_dir)
    try:
        if spec.kind == "pretrained":
            # the resolved file itself, with the tag's preprocessing: what was hashed is what is loaded
            tag = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) or {}
            pp = {k: v for k, v in tag.items() if k in open_clip.transform.PreprocessCfg.__dataclass_fields__ and k != "size"}
            model = open_clip.create_model(spec.arch, pretrained=weights, device="cpu", cache_dir=cache_dir,
                                           force_preprocess_cfg=pp, require_pretrained=True, weights_only=True)
        else:  # open_clip resolves hf-hub weights again, from the cache hub.resolve just filled
            model = open_clip.create_model(spec.name, device="cpu", cache_dir=cache_dir, require_pretrained=True,
                                           weights_only=True)
    except (RuntimeError, OSError, ValueError) as e:
        raise unavailable(spec, _first_line(e)) from None
    return model, weights


def _text_tower(model, model_cfg: dict, arch: str, token_ids, weights) -> dict | None:
    """The text tower's exact config for the light text path (textfast.py), which reads safetensors only."""
    blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
    if not str(weights).endswith(".safetensors") or not blocks or not model_cfg.get("text_cfg"):
        return None
    from open_clip.transformer import QuickGELU

    cfg = json.loads(json.dumps(model_cfg))
    cfg["quick_gelu"] = isinstance(blocks[0].mlp.gelu, QuickGELU)  # openai weights set it outside the config
    return {"arch": arch, "model_cfg": cfg, "token_ids": [int(t) for t in token_ids] if token_ids else None}


def _size(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size if isinstance(size, int) else max(size))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def resolve_device(device: str) -> str:
    """auto -> cuda when a GPU is visible, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("--device cuda was asked for, but torch sees no CUDA GPU")
    return device


def cpu_supports_bf16() -> bool:
    """True where bfloat16 weights were measured to be faster than fp32 on this CPU: native bf16 dot
    products (AVX512_BF16, or AMX). Measured side by side, ViT-B-32 image tower, 1 thread, batch 16:
    AMD EPYC with avx512_bf16 and no AMX 6.2-7.3 -> 13.0-13.9 img/s (x1.9); Intel Sapphire Rapids with
    AMX x2.5-3.6 (perf-notes.md). Without either, bf16 matmuls are emulated and slower than fp32."""
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
                break
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        if device == "cuda":
            return "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    return precision



class OpenClipEncoder:
    """Embeds PIL images and texts with an open_clip model; returns unit float32 rows."""

    def __init__(self, loaded: LoadedClip, *, device: str = "cpu", precision: str = "fp32"):
        import torch

        self.loaded = loaded
        self.name = loaded.name
        self.dim = loaded.dim
        self.device = device
        self.precision = precision
        self.tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        # mixed bf16 in a transformer image tower only (a ResNet one stays fp32): open_clip's encode_text casts
        # its residual stream to its blocks' weight dtype, and a query's text costs little in fp32 (so the full
        # model's text vectors are the numpy text tower's, whatever the precision)
        self._mixed = self.dtype == torch.bfloat16 and mixable(loaded.model)
        if self._mixed:
            _bf16_blocks(getattr(loaded.model, "visual", loaded.model))
            self.dtype = torch.float32  # what flows between the blocks, and the inputs
        elif self.dtype != torch.float32:
            loaded.model.to(self.dtype)
        self.image_size = _image_size(loaded)

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str = "auto", precision: str = "auto", cache_dir: str | None = None):
        dev = resolve_device(device)
        return cls(load_clip(spec, device=dev, cache_dir=cache_dir), device=dev, precision=resolve_precision(precision, dev))

    @property
    def fingerprint(self) -> dict:
        return self.loaded.fingerprint()

    @property
    def weights_source(self) -> dict:
        return self.loaded.source

    def preprocess(self, image):
        return self.loaded.preprocess(image)

    def embed_batch(self, tensors: Sequence) -> np.ndarray:
        import torch

        if len(tensors) == 0:
            return np.empty((0, self.dim), np.float32)
        x = torch.stack(list(tensors)).to(self.device, self.dtype)
        with torch.inference_mode():
            out = self.loaded.model.encode_image(x)
        return _to_unit(out)

    def embed_images(self, images: Sequence) -> np.ndarray:
        return self.embed_batch([self.preprocess(im) for im in images])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if len(texts) == 0:
            return np.empty((0, self.dim), np.float32)
        tokens = self.loaded.tokenize(list(texts)).to(self.device)
        with torch.inference_mode():
            out = self.loaded.model.encode_text(tokens)
        return _to_unit(out)


def _to_unit(t) -> np.ndarray:
    a = t.float().cpu().numpy()
    # non-finite rows stay non-finite, so the caller can refuse them; the rest are normalised
    return l2_normalize(a)


def _image_size(loaded: LoadedClip) -> int:
    size = loaded.preprocess_cfg.get("size", 224)
    return int(size if isinstance(size, int) else max(size))
