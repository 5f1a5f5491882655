"""The open_clip encoder: the only module that imports torch and open_clip.

Loading is strict: a model either loads all of its weights or raises ModelUnavailableError; a
randomly initialised model is never returned for search.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ModelUnavailableError
from . import ModelSpec, l2_normalize

logger = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.bin")


@dataclass
class LoadedClip:
    """A model with everything needed to use it: its transform, tokenizer and identity."""

    name: str
    model: object  # open_clip.CLIP
    preprocess: Callable  # PIL image -> CHW float tensor
    tokenize: Callable  # list[str] -> LongTensor (token remap applied)
    arch: str
    model_cfg: dict
    preprocess_cfg: dict
    weights_id: str
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    def fingerprint(self) -> dict:
        return {
            "model": self.name,
            "arch": self.arch,
            "weights": self.weights_id,
            "dim": self.dim,
            "preprocess": {k: self.preprocess_cfg.get(k) for k in sorted(self.preprocess_cfg)},
            "normalized": True,
        }


def sha256_file(path: Path) -> str:
    """The file's sha256, remembered by (path, size, mtime, ctime, inode): hashing 600 MB of weights costs ~0.75 s
    on every cold query otherwise."""
    path = Path(path)
    try:
        st = os.stat(path)
        key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    except OSError:
        key = None
    cache = _read_hash_cache() if key else {}
    if key and key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if key:
        cache = {k: v for k, v in cache.items() if not k.startswith(os.path.abspath(path) + "|")}
        cache[key] = digest
        _write_hash_cache(cache)
    return digest


def pretrained_record_path() -> Path | None:
    p = hash_cache_path()
    return p.with_name("pretrained-weights.json") if p else None


def _remember_pretrained(spec: ModelSpec, model, model_cfg: dict, cache_dir: str | None) -> None:
    """Note where open_clip's download of ARCH:TAG lives (the Hugging Face cache), and the text tower's exact
    config, so a later text query can use the light text path (encoders/textfast.py) without open_clip."""
    try:
        import open_clip
        from huggingface_hub import try_to_load_from_cache
        from open_clip.transformer import QuickGELU

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) or {}
        path = cfg.get("file")
        if not path and cfg.get("hf_hub"):
            repo, filename = os.path.split(cfg["hf_hub"])
            filename = filename or "open_clip_pytorch_model.bin"
            names = [filename.replace("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
                     .replace(".bin", ".safetensors").replace(".pth", ".safetensors"), filename]
            for name in names:
                found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
                if isinstance(found, str) and os.path.isfile(found):
                    path = found
                    break
        if not path or not str(path).endswith(".safetensors"):
            return
        mcfg = json.loads(json.dumps(model_cfg))
        blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
        if not blocks:
            return
        mcfg["quick_gelu"] = isinstance(blocks[0].mlp.gelu, QuickGELU)  # openai weights set it outside the config
        rec_path = pretrained_record_path()
        if rec_path is None:
            return
        try:
            records = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            records = {}
        records[spec.name] = {"weights": os.path.realpath(path), "model_cfg": mcfg}
        rec_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = rec_path.with_name(f"{rec_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records))
        os.replace(tmp, rec_path)
    except Exception:  # only an optimisation: the full model answers queries otherwise
        logger.debug("could not record where %s lives", spec.name, exc_info=True)


def hash_cache_path() -> Path | None:
    """Where weight hashes are remembered (the user cache dir); None turns the cache off."""
    try:
        import platformdirs
    except ImportError:
        return None
    return Path(platformdirs.user_cache_dir("clipsearch")) / "weights-sha256.json"


def _read_hash_cache() -> dict:
    p = hash_cache_path()
    try:
        data = json.loads(p.read_text()) if p else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_hash_cache(cache: dict) -> None:
    p = hash_cache_path()
    if p is None:
        return
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(list(cache.items())[-64:])))
        os.replace(tmp, p)
    except OSError:  # a read-only home: hash again next time
        pass


def _unavailable(spec: ModelSpec, why: str) -> ModelUnavailableError:
    ways = (
        "clipsearch fetches weights through open_clip into the Hugging Face cache ($HF_HOME or "
        "~/.cache/huggingface) when the network is available; with HF_HUB_OFFLINE=1 they must already be "
        "in that cache; or give a local file as --model ARCH:/path/to/weights.safetensors, or a checkpoint "
        "directory written by `clipsearch train`"
    )
    return ModelUnavailableError(f"cannot load model {spec.name}: {why}. {ways}")


def read_state_dict(path: Path) -> dict:
    """Weights from safetensors, or a torch file loaded with weights_only=True (no pickle code runs)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # the unpickler refuses anything but tensors and plain containers
            raise ModelUnavailableError(f"refusing to load {path}: not a plain weights file ({type(e).__name__})") from None
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ModelUnavailableError(f"{path} does not hold a state dict")
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _build(model_cfg: dict, arch_name: str, *, meta: bool = False):
    """An open_clip model from a config dict, with uninitialised (to be loaded) weights."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = dict(model_cfg)
    cfg.pop("custom_text", None)
    cls = CustomTextCLIP if model_cfg.get("custom_text") or "hf_model_name" in cfg.get("text_cfg", {}) else CLIP
    if meta:
        import torch

        # no memory allocated and no random init (2-3 s for ViT-B-32): the weights are assigned next
        with torch.device("meta"):
            return cls(**cfg)
    return cls(**cfg)


def _materialize_buffers(model) -> None:
    """Non-persistent buffers are not in a state dict: rebuild the causal masks a meta build left empty."""
    import torch

    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            if name == "attn_mask" and buf.dim() == 2 and buf.shape[0] == buf.shape[1]:
                module._buffers[name] = torch.full(tuple(buf.shape), float("-inf"), dtype=buf.dtype).triu_(1)
            else:
                raise RuntimeError(f"cannot materialise buffer {name} of {type(module).__name__}")


def _build_loaded(model_cfg: dict, arch_name: str, sd: dict, spec: ModelSpec):
    """Build on the meta device and assign the checkpoint's tensors (no init, no copy); the slow way if that fails."""
    try:
        model = _build(model_cfg, arch_name, meta=True)
        _load_weights(model, sd, spec, assign=True)
        _materialize_buffers(model)
        return model
    except ModelUnavailableError:
        raise
    except Exception:  # an architecture that cannot be built on the meta device
        logger.debug("meta-device build failed for %s; building normally", arch_name, exc_info=True)
        model = _build(model_cfg, arch_name)
        _load_weights(model, sd, spec)
        return model


def _load_weights(model, sd: dict, spec: ModelSpec, *, assign: bool = False) -> None:
    import torch

    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise _unavailable(spec, f"the weights do not fit the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise _unavailable(spec, f"weight {k} has shape {tuple(v.shape)}, the architecture wants {tuple(own[k].shape)}")
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True, assign=assign)


def load_clip(spec: ModelSpec, *, device: str = "cpu", cache_dir: str | None = None) -> LoadedClip:
    """Load a model strictly, in eval mode, on `device`."""
    import open_clip
    import torch

    extra: dict = {}
    if spec.kind in ("builtin", "dir"):
        cfg_path = Path(spec.path) / CONFIG_NAME
        if not cfg_path.is_file():
            raise _unavailable(spec, f"{cfg_path} is missing")
        conf = json.loads(cfg_path.read_text())
        model_cfg = conf["model_cfg"]
        extra = conf.get("clipsearch", {})
        weights = next((Path(spec.path) / n for n in WEIGHT_NAMES if (Path(spec.path) / n).is_file()), None)
        if weights is None:
            raise _unavailable(spec, f"no weights file ({' or '.join(WEIGHT_NAMES)}) in {spec.path}")
        model = _build_loaded(model_cfg, spec.name, read_state_dict(weights), spec)
        pp = open_clip.transform.merge_preprocess_dict(
            open_clip.transform.PreprocessCfg(size=_size(model)), conf.get("preprocess_cfg", {}))
        arch = extra.get("arch", model_cfg.get("name", "custom"))
        weights_id = "sha256:" + sha256_file(weights)
    elif spec.kind == "file":
        model_cfg = open_clip.get_model_config(spec.arch)
        if model_cfg is None:
            raise _unavailable(spec, f"unknown architecture {spec.arch!r} (see open_clip.list_models())")
        model = _build_loaded(model_cfg, spec.arch, read_state_dict(spec.path), spec)
        pp = open_clip.transform.merge_preprocess_dict(
            open_clip.transform.PreprocessCfg(size=_size(model)), model_cfg.get("preprocess_cfg", {}))
        arch = spec.arch
        weights_id = "sha256:" + sha256_file(spec.path)
    else:  # pretrained tag or hf-hub: open_clip's own resolution and cache
        if spec.kind == "pretrained":
            if spec.arch not in open_clip.list_models():
                raise _unavailable(spec, f"unknown architecture {spec.arch!r}")
            tags = open_clip.list_pretrained_tags_by_model(spec.arch)
            if spec.pretrained not in tags:
                raise _unavailable(spec, f"unknown pretrained tag {spec.pretrained!r} for {spec.arch} (known: {', '.join(tags) or 'none'})")
        try:
            model, preprocess_val = open_clip.create_model_from_pretrained(
                spec.arch if spec.kind == "pretrained" else spec.name,
                pretrained=spec.pretrained, cache_dir=cache_dir, device="cpu",
            )
        except (RuntimeError, OSError, ValueError) as e:
            raise _unavailable(spec, _first_line(e)) from None
        except Exception as e:  # huggingface_hub raises its own tree (offline, not cached, ...)
            if type(e).__module__.startswith(("huggingface_hub", "requests", "httpx", "urllib3")):
                raise _unavailable(spec, _first_line(e)) from None
            raise
        model_cfg = open_clip.get_model_config(spec.arch) if spec.kind == "pretrained" else {}
        if not model_cfg:
            model_cfg = {"embed_dim": int(model.text_projection.shape[-1]) if getattr(model, "text_projection", None) is not None else 0}
        from open_clip.model import get_model_preprocess_cfg

        pp = dict(get_model_preprocess_cfg(model))
        arch = spec.arch
        weights_id = f"pretrained:{spec.pretrained}" if spec.kind == "pretrained" else spec.name
        if spec.kind == "pretrained":
            _remember_pretrained(spec, model, model_cfg, cache_dir)
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
        ctx = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
        base_tok = open_clip.SimpleTokenizer(context_length=ctx)
    token_ids = extra.get("token_ids")
    if token_ids:
        from ..training.vocab import remap_tokens

        def tokenize(texts):
            return remap_tokens(base_tok(list(texts)), token_ids)
    else:
        def tokenize(texts):
            return base_tok(list(texts))
    return LoadedClip(name=spec.name, model=model, preprocess=preprocess, tokenize=tokenize, arch=arch,
                      model_cfg=model_cfg, preprocess_cfg=pp, weights_id=weights_id, extra=extra)


def pil_preprocess(pp: dict) -> Callable | None:
    """open_clip's evaluation transform for resize_mode "shortest" (Resize of the short side, CenterCrop,
    ToTensor, Normalize) in Pillow and numpy, with the same output to the bit (tested); None for other modes.

    The indexer preprocesses in worker threads while the main thread runs the model. torchvision's
    ToTensor and Normalize are torch ops, and each worker thread calling them brought up its own team of
    OpenMP threads next to the model's: on 2 cores that oversubscription took a third of the throughput.
    Pillow and numpy do the same arithmetic here without touching torch's thread pools.
    """
    size = pp.get("size", 224)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            return None
        size = size[0]
    interpolation = pp.get("interpolation", "bicubic")
    if pp.get("resize_mode", "shortest") != "shortest" or interpolation not in ("bicubic", "bilinear"):
        return None
    import torch
    from PIL import Image

    size = int(size)
    resample = Image.BICUBIC if interpolation == "bicubic" else Image.BILINEAR
    mean = np.asarray(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pp.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=np.float32).reshape(3, 1, 1)

    def preprocess(image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)  # torchvision's rounding (truncation)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        image = image.resize((new_w, new_h), resample)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        # channels first while still bytes, then ToTensor's /255 and Normalize's (x - mean) / std in place:
        # the same float32 operations in the same order, 0.4 ms instead of 1.5 ms a picture
        a = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)).astype(np.float32)
        np.divide(a, np.float32(255), out=a)
        np.subtract(a, mean, out=a)
        np.divide(a, std, out=a)
        return torch.from_numpy(a)

    return preprocess


def _size(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size if isinstance(size, int) else max(size))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


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
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self._mixed = self.dtype == torch.bfloat16 and _bf16_blocks(loaded.model)
        if self._mixed:
            self.dtype = torch.float32  # what flows between the blocks, and the inputs
        elif self.dtype != torch.float32:
            loaded.model.to(self.dtype)
        self.image_size = _image_size(loaded)
        self._trim = _can_trim_text(loaded.model)

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str = "auto", precision: str = "auto", cache_dir: str | None = None):
        dev = resolve_device(device)
        return cls(load_clip(spec, device=dev, cache_dir=cache_dir), device=dev, precision=resolve_precision(precision, dev))

    @property
    def fingerprint(self) -> dict:
        return self.loaded.fingerprint()

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
            if self._trim:
                out = _encode_text_trimmed(self.loaded.model, tokens, torch.float32 if self._mixed else None)
            else:
                out = self.loaded.model.encode_text(tokens)
        return _to_unit(out)


def _bf16_blocks(model) -> bool:
    """bf16 where the FLOPs are, fp32 where the rounding would add up.

    The transformer blocks' attention and MLP (97% of ViT-B-32's FLOPs) get bfloat16 weights and inputs;
    the residual stream, LayerNorms, patch/token embeddings and projections stay float32. Measured on ViT-B-32
    (random weights, 1 thread, batch 16): as fast as the all-bf16 model (14.3-14.8 vs 13.1-15.2 img/s, fp32
    5.4-7.4) and 10x closer to fp32 (1 - cosine 5e-6 instead of 5e-5), which keeps the shapes demo's top-10
    rankings where the all-bf16 model reorders near-ties. The casts happen in forward hooks, so the modules,
    their names and the attention fast path (one tensor for query, key and value) stay as open_clip made them.
    """
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    blocks = [m for m in model.modules() if isinstance(m, ResidualAttentionBlock)]
    if not blocks or any(hasattr(b, "ln_1_kv") for b in blocks):
        return False

    def to_bf16(_mod, args, kwargs):
        seen: dict = {}

        def cast(a):
            if torch.is_tensor(a) and a.is_floating_point() and a.dtype != torch.bfloat16:
                if id(a) not in seen:  # query is key is value: keep them one tensor
                    seen[id(a)] = a.to(torch.bfloat16)
                return seen[id(a)]
            return a

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    def to_fp32(_mod, _args, out):
        if isinstance(out, tuple):
            return tuple(o.float() if torch.is_tensor(o) and o.is_floating_point() else o for o in out)
        return out.float()

    for b in blocks:
        for sub in (b.attn, b.mlp):
            sub.to(torch.bfloat16)
            sub.register_forward_pre_hook(to_bf16, with_kwargs=True)
            sub.register_forward_hook(to_fp32)
    if _onednn_packing_works():
        for b in blocks:
            _pack_mlp(b.mlp)
    return True


# oneDNN's prepacked linear, the kernel torch.compile's CPU freezing pass uses; packed once for this many rows
_PACK_ROWS = 1600  # a batch of 32 images of ViT-B-32's 50 tokens


@functools.cache
def _onednn_packing_works() -> bool:
    """torch.ops.mkldnn's prepacked bf16 linear is a private torch API: use it only where it exists and gives
    F.linear's answer (the same oneDNN matmul without the per-call weight reorder)."""
    import torch
    import torch.nn.functional as F

    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        w = torch.randn(48, 32, generator=g).bfloat16()
        bias = torch.randn(48, generator=g).bfloat16()
        x = torch.randn(5, 7, 32, generator=g).bfloat16()
        packed = torch.ops.mkldnn._reorder_linear_weight(w, _PACK_ROWS)
        with torch.inference_mode():
            plain = F.linear(x, w, bias)
            fused = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], "none")
            return (torch.equal(torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], ""), plain)
                    and torch.allclose(fused.float(), F.gelu(plain).float(), rtol=1e-2, atol=1e-2))
    except Exception:  # an older or a future torch, or a build without oneDNN
        logger.debug("no oneDNN prepacked linear here", exc_info=True)
        return False


def _pack_mlp(mlp) -> None:
    """The MLP's two matmuls (two thirds of a ViT block's FLOPs) through prepacked oneDNN weights, the exact
    GELU fused into the first. ViT-B-32 image tower, batch 32, 2 threads, interleaved runs: 37.2 -> 40.5 img/s
    (median of 12). The parameters stay as they are (state_dict, names); the packed copies (113 MB for
    ViT-B-32) serve inference only."""
    import torch
    from torch import nn

    fc, act, proj = getattr(mlp, "c_fc", None), getattr(mlp, "gelu", None), getattr(mlp, "c_proj", None)
    if not (isinstance(fc, nn.Linear) and isinstance(proj, nn.Linear) and fc.bias is not None
            and proj.bias is not None and fc.weight.dtype == proj.weight.dtype == torch.bfloat16
            and fc.weight.device.type == proj.weight.device.type == "cpu"):  # oneDNN: CPU tensors only
        return
    fuse = type(act) is nn.GELU and act.approximate == "none"
    fc.forward = _packed_linear(fc, "gelu" if fuse else "none")
    proj.forward = _packed_linear(proj, "none")
    if fuse:
        mlp.gelu = nn.Identity()


def _packed_linear(linear, activation: str):
    import torch

    weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), _PACK_ROWS)
    bias = linear.bias.detach()
    algorithm = "none" if activation == "gelu" else ""  # "none": the exact (erf) GELU

    def forward(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], algorithm)

    return forward


def _to_unit(t) -> np.ndarray:
    a = t.float().cpu().numpy()
    # non-finite rows stay non-finite, so the caller can refuse them; the rest are normalised
    return l2_normalize(a)


def _image_size(loaded: LoadedClip) -> int:
    size = loaded.preprocess_cfg.get("size", 224)
    return int(size if isinstance(size, int) else max(size))


def _can_trim_text(model) -> bool:
    """Cutting the context after the last end-of-text token is exact for causal text towers."""
    return (
        hasattr(model, "token_embedding") and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and hasattr(model, "positional_embedding")
    )


def _encode_text_trimmed(model, tokens, dtype=None):
    """model.encode_text on tokens[:, :L], L = the longest sequence up to its end token (the residual stream
    in `dtype`, default the model's cast dtype)."""
    from open_clip.transformer import text_global_pool

    if model.text_pool_type == "argmax":
        ends = tokens.argmax(dim=-1)
    else:
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    n = int(ends.max()) + 1
    tokens = tokens[:, :n]
    cast = dtype or model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast)
    x = x + model.positional_embedding[:n].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if hasattr(model.text_projection, "weight") else x @ model.text_projection
    return x
