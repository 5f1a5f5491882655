"""Contrastive image-text training (CLIP) on a captioned folder, from scratch or fine-tuning.

Dataset format: a folder with `captions.csv` (header `file,caption`; `file` relative to the
folder, or to its `images/` subfolder as in shapes-sample). If the folder also holds
`scenes.jsonl` (the shapes domain's metadata), captions are augmented from the scenes: random
object order, and partial descriptions of one object ("a red circle", "a star at the top"), with
multi-positive targets so that an image matching a partial description is never a negative for it.

Loss: symmetric cross-entropy over the batch similarity matrix `scale * I @ T^T` with a learnable
logit scale (initialised to log(1/0.07) for new models, clamped at ln(100)).

The checkpoint is a directory: `open_clip_config.json` = {"model_cfg", "preprocess_cfg",
"clipsearch": {...}} and `open_clip_model.safetensors`, which open_clip's `local-dir:` schema and
clipsearch's `--model DIR` read. A model with a reduced vocabulary (see vocab.py) records the kept
tokenizer ids in `clipsearch.token_ids`.

Nothing here prints: progress goes to a callback (the CLI turns it into a tqdm bar).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, ModelUnavailableError

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------- data

@dataclass
class CaptionedItem:
    file: str
    caption: str
    scene: dict | None = None


def resolve_image_path(folder: Path, name: str) -> Path:
    p = folder / name
    if p.is_file():
        return p
    q = folder / "images" / name
    if q.is_file():
        return q
    return p


def read_captioned_folder(folder: str | Path) -> list[CaptionedItem]:
    """Rows of captions.csv (file, caption), with scenes from scenes.jsonl when present."""
    folder = Path(folder)
    csv_path = folder / "captions.csv"
    if not csv_path.is_file():
        raise ConfigError(f"{folder} has no captions.csv (a header `file,caption`, one image a line)")
    items: list[CaptionedItem] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "file" not in reader.fieldnames or "caption" not in reader.fieldnames:
            raise ConfigError(f"{csv_path} must have a header line `file,caption`")
        for row in reader:
            if row["file"] and row["caption"] is not None:
                items.append(CaptionedItem(row["file"], row["caption"].strip()))
    if not items:
        raise ConfigError(f"{csv_path} lists no images")
    scenes_path = folder / "scenes.jsonl"
    if scenes_path.is_file():
        scenes = {}
        with open(scenes_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    s = json.loads(line)
                    scenes[s["file"]] = s
        for it in items:
            it.scene = scenes.get(it.file)
    missing = [it.file for it in items if not resolve_image_path(folder, it.file).is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} image(s) listed in {csv_path} do not exist, e.g. {missing[0]}")
    return items


def pil_transform(preprocess_cfg: dict):
    """The deterministic PIL part (resize, crop, RGB) of the eval preprocess of this config."""
    import open_clip
    from torchvision import transforms as T

    size = preprocess_cfg.get("size", 224)
    tf = open_clip.image_transform(
        size,
        is_train=False,
        mean=preprocess_cfg.get("mean"),
        std=preprocess_cfg.get("std"),
        resize_mode=preprocess_cfg.get("resize_mode"),
        interpolation=preprocess_cfg.get("interpolation"),
        fill_color=preprocess_cfg.get("fill_color", 0),
    )
    steps = [t for t in tf.transforms if not isinstance(t, (T.ToTensor, T.Normalize))]
    return T.Compose(steps)


def preprocess_to_uint8(images: Sequence, preprocess_cfg: dict):
    """PIL images -> uint8 tensor (n, 3, H, W) after the eval resize/crop (no normalisation)."""
    import torch

    tf = pil_transform(preprocess_cfg)
    arrs = [np.asarray(tf(im.convert("RGB")), dtype=np.uint8) for im in images]
    if not arrs:
        size = preprocess_cfg.get("size", 224)
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def load_folder_images(folder: Path, items: Sequence[CaptionedItem], preprocess_cfg: dict, progress: Callable[[int], None] | None = None):
    import torch
    from PIL import Image

    tf = pil_transform(preprocess_cfg)
    out = None
    for i, it in enumerate(items):
        with Image.open(resolve_image_path(folder, it.file)) as im:
            arr = np.asarray(tf(im.convert("RGB")), dtype=np.uint8)
        if out is None:
            out = torch.empty((len(items), 3, arr.shape[0], arr.shape[1]), dtype=torch.uint8)
        out[i] = torch.from_numpy(np.array(arr)).permute(2, 0, 1)
        if progress is not None:
            progress(1)
    return out


def normalize_batch(u8, preprocess_cfg: dict):
    import torch

    mean = torch.tensor(preprocess_cfg.get("mean") or OPENAI_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg.get("std") or OPENAI_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (u8.float().div_(255.0) - mean) / std


# --------------------------------------------------------------------------- shapes captions

_SIZE_IDX = {"small": 0, "large": 1}


def _obj_code(o: dict) -> tuple[int, int, int, int]:
    from .shapes import COLORS, SHAPES

    return (_SIZE_IDX[o["size"]], list(COLORS).index(o["color"]), SHAPES.index(o["shape"]), o["cell"][0] * 3 + o["cell"][1])


def scene_codes(scene: dict) -> np.ndarray:
    """(2, 4) int array of the scene's objects; a missing second object is all -9."""
    arr = np.full((2, 4), -9, dtype=np.int64)
    for k, o in enumerate(scene["objects"][:2]):
        arr[k] = _obj_code(o)
    return arr


class ShapesCaptionSampler:
    """Random texts for a scene: the full caption (sometimes in swapped object order) or a partial
    description of one object; returns (text, constraints (2, 4) with -1 = any, -9 = unused, complete)."""

    def __init__(self, p_full: float = 0.45, p_swap: float = 0.3, p_size: float = 0.4, p_color: float = 0.7,
                 p_position: float = 0.4, p_no_shape: float = 0.05):
        self.p_full, self.p_swap = p_full, p_swap
        self.p_size, self.p_color, self.p_position, self.p_no_shape = p_size, p_color, p_position, p_no_shape

    def sample(self, scene: dict, rng: np.random.Generator) -> tuple[str, np.ndarray, bool]:
        from .shapes import describe, partial_description, reading_order

        objs = reading_order(scene["objects"])
        cons = np.full((2, 4), -9, dtype=np.int64)
        if rng.random() < self.p_full:
            if len(objs) == 2 and rng.random() < self.p_swap:
                objs = objs[::-1]
            for k, o in enumerate(objs[:2]):
                cons[k] = _obj_code(o)
            return " and ".join(describe(o) for o in objs), cons, True
        o = objs[int(rng.integers(len(objs)))]
        size = rng.random() < self.p_size
        color = rng.random() < self.p_color
        position = rng.random() < self.p_position
        shape = not (rng.random() < self.p_no_shape and (size or color or position))
        code = _obj_code(o)
        cons[0] = [code[0] if size else -1, code[1] if color else -1, code[2] if shape else -1, code[3] if position else -1]
        return partial_description(o, size=size, color=color, shape=shape, position=position), cons, False


def match_matrix(img_codes: np.ndarray, n_objs: np.ndarray, cons: np.ndarray, complete: np.ndarray) -> np.ndarray:
    """M[a, b] = text b truly describes image a (objects (B,2,4), constraints (B,2,4))."""
    o = img_codes[:, None, None, :, :]          # a, 1, 1, m, 4
    c = cons[None, :, :, None, :]               # 1, b, k, 1, 4
    ok = ((c == -1) | (c == o)).all(-1)          # a, b, k, m
    ok &= (img_codes[:, None, None, :, 0] != -9)
    used1 = cons[:, 1, 0] != -9                  # b
    one = ok[:, :, 0, :].any(-1)
    two = (ok[:, :, 0, 0] & ok[:, :, 1, 1]) | (ok[:, :, 0, 1] & ok[:, :, 1, 0])
    m = np.where(used1[None, :], two, one)
    n_cons = 1 + used1.astype(np.int64)
    m &= ~complete[None, :] | (n_objs[:, None] == n_cons[None, :])
    return m


# --------------------------------------------------------------------------- models

@dataclass
class LoadedModel:
    model: Any
    model_cfg: dict
    preprocess_cfg: dict
    token_ids: list[int] | None
    source: str
    extra: dict = field(default_factory=dict)

    def tokenize(self, texts: Sequence[str]):
        import open_clip

        from .vocab import remap_tokens

        ctx = self.model_cfg.get("text_cfg", {}).get("context_length", 77)
        tok = self.extra.get("tokenizer")
        if tok is None:
            tok = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
            self.extra["tokenizer"] = tok
        tokens = tok(list(texts))
        if self.token_ids:
            tokens = remap_tokens(tokens, self.token_ids)
        return tokens


def default_preprocess_cfg(size: int) -> dict:
    return {"size": size, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic", "resize_mode": "shortest"}


def _image_size(model_cfg: dict) -> int:
    s = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(s[0] if isinstance(s, (list, tuple)) else s)


def build_model(model_cfg: dict, preprocess_cfg: dict | None = None):
    """A randomly initialised open_clip model from an open_clip model config dict."""
    import open_clip

    cfg = copy.deepcopy(model_cfg)
    pp = preprocess_cfg or default_preprocess_cfg(_image_size(cfg))
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that a config-only directory has no weights
    try:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / CONFIG_NAME).write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pp}))
            try:
                model = open_clip.create_model("local-dir:" + d, load_weights=False)
            except Exception as e:  # noqa: BLE001 - open_clip raises many kinds
                raise ConfigError(f"invalid open_clip model config: {e}") from e
    finally:
        root.setLevel(level)
    with _no_grad():
        if hasattr(model, "logit_scale"):
            model.logit_scale.fill_(INIT_LOGIT_SCALE)
    return model


class _no_grad:
    def __enter__(self):
        import torch

        self._g = torch.no_grad()
        self._g.__enter__()

    def __exit__(self, *a):
        return self._g.__exit__(*a)


def read_arch_config(arch: str | dict) -> dict:
    """An open_clip model config from a dict, a JSON file (bare model_cfg or a checkpoint config) or a name."""
    import open_clip

    if isinstance(arch, dict):
        cfg = arch
    else:
        p = Path(arch)
        if p.is_dir():
            p = p / CONFIG_NAME
        if p.is_file():
            try:
                cfg = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"{arch} is not valid JSON: {e}") from e
        else:
            cfg = open_clip.get_model_config(str(arch))
            if cfg is None:
                raise ConfigError(f"unknown architecture {arch!r}: give an open_clip config JSON file or a name from open_clip.list_models()")
    cfg = copy.deepcopy(cfg.get("model_cfg", cfg))
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ConfigError("an open_clip model config needs embed_dim, vision_cfg and text_cfg")
    return cfg


def load_model(name: str) -> LoadedModel:
    """Any model `--model` accepts, with its weights (never random), as a LoadedModel for training."""
    import open_clip

    from ..encoders import parse_model_spec

    spec = parse_model_spec(name)
    if spec.kind in ("builtin", "dir"):
        cfg_path = spec.path / CONFIG_NAME
        if not cfg_path.is_file():
            raise ModelUnavailableError(f"{spec.path} has no {CONFIG_NAME}")
        full = json.loads(cfg_path.read_text())
        model_cfg = full["model_cfg"]
        pp = full.get("preprocess_cfg") or default_preprocess_cfg(_image_size(model_cfg))
        extra_info = full.get("clipsearch", {}) or {}
        model = build_model(model_cfg, pp)
        weights = spec.path / WEIGHTS_NAME
        if weights.is_file():
            from safetensors.torch import load_file

            sd = load_file(str(weights))
        else:
            import torch

            pt = spec.path / "open_clip_pytorch_model.bin"
            if not pt.is_file():
                raise ModelUnavailableError(f"{spec.path} has no {WEIGHTS_NAME}")
            sd = torch.load(str(pt), map_location="cpu", weights_only=True)
        sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ModelUnavailableError(f"weights in {spec.path} do not fit its config: {e}") from e
        return LoadedModel(model, model_cfg, pp, extra_info.get("token_ids"), spec.name, {"clipsearch": extra_info})
    if spec.kind in ("pretrained", "file"):
        arch = spec.arch
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ModelUnavailableError(f"unknown open_clip architecture {arch!r}")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=str(spec.path) if spec.kind == "file" else spec.pretrained, require_pretrained=True
            )
        except Exception as e:  # noqa: BLE001
            raise ModelUnavailableError(f"cannot load {name}: {e}") from e
        pp = dict(model.visual.preprocess_cfg) if hasattr(model.visual, "preprocess_cfg") else default_preprocess_cfg(_image_size(model_cfg))
        lm = LoadedModel(model, copy.deepcopy(model_cfg), pp, None, spec.name)
        lm.extra["tokenizer"] = open_clip.get_tokenizer(arch)
        return lm
    raise ModelUnavailableError(f"fine-tuning from {name!r} ({spec.kind}) is not supported; use a checkpoint directory or ARCH:PRETRAINED")


# --------------------------------------------------------------------------- model surgery

def tower_blocks(model, tower: str):
    """The residual blocks of the vision or text tower (a ModuleList); for a ResNet image tower, its
    bottleneck blocks in order (the stem counts as frozen with the blocks before them)."""
    if tower == "vision":
        v = getattr(model, "visual", None)
        if all(hasattr(v, f"layer{i}") for i in range(1, 5)) and hasattr(v, "attnpool"):  # open_clip's ModifiedResNet
            import torch

            return torch.nn.ModuleList([b for i in range(1, 5) for b in getattr(v, f"layer{i}")])
        t = getattr(v, "transformer", None)
    else:
        t = getattr(model, "transformer", None)
        if t is None and hasattr(model, "text"):
            t = getattr(model.text, "transformer", None)
    blocks = getattr(t, "resblocks", None)
    if blocks is None:
        raise ConfigError(f"the {tower} tower of this model is not an open_clip transformer; freezing by blocks is not supported")
    return blocks


def tower_head_params(model, tower: str) -> list:
    """Final norm and projection of a tower (trainable whenever some of its blocks are)."""
    out = []
    if tower == "vision":
        v = model.visual
        for name in ("ln_post", "proj", "attn_pool", "attnpool", "head"):
            m = getattr(v, name, None)
            if m is None:
                continue
            out.extend([m] if not hasattr(m, "parameters") else list(m.parameters()))
    else:
        src = model.text if hasattr(model, "text") and not hasattr(model, "ln_final") else model
        for name in ("ln_final", "text_projection"):
            m = getattr(src, name, None)
            if m is None:
                continue
            out.extend([m] if not hasattr(m, "parameters") else list(m.parameters()))
    return out


def tower_params(model, tower: str) -> list:
    if tower == "vision":
        return list(model.visual.parameters())
    vis = {id(p) for p in model.visual.parameters()}
    return [p for n, p in model.named_parameters() if id(p) not in vis and n not in ("logit_scale", "logit_bias")]


def apply_freezing(model, unfreeze_vision_blocks: int = -1, unfreeze_text_blocks: int = -1, freeze_logit_scale: bool = False) -> None:
    """Freeze each tower except its last N blocks plus its final norm and projection (N = -1: all).

    N = 0 leaves only the final norm and projection of that tower trainable.
    """
    for tower, n in (("vision", unfreeze_vision_blocks), ("text", unfreeze_text_blocks)):
        params = tower_params(model, tower)
        if n is None or n < 0:
            for p in params:
                p.requires_grad_(True)
            continue
        for p in params:
            p.requires_grad_(False)
        blocks = tower_blocks(model, tower)
        if n > len(blocks):
            raise ConfigError(f"the {tower} tower has {len(blocks)} blocks; cannot unfreeze {n}")
        for b in list(blocks)[len(blocks) - n:] if n else []:
            for p in b.parameters():
                p.requires_grad_(True)
        for p in tower_head_params(model, tower):
            p.requires_grad_(True)
    if hasattr(model, "logit_scale"):
        model.logit_scale.requires_grad_(not freeze_logit_scale)


def replace_projections(model, model_cfg: dict, dim: int, seed: int = 0) -> dict:
    """New, randomly initialised visual.proj and text_projection mapping to `dim`; returns the new config."""
    import torch

    if dim < 1:
        raise ConfigError("--new-projection must be a positive embedding dimension")
    g = torch.Generator().manual_seed(seed)
    v = model.visual
    pool = getattr(v, "attnpool", None)
    if isinstance(getattr(v, "proj", None), torch.nn.Parameter):
        width = v.proj.shape[0]
        v.proj = torch.nn.Parameter(torch.randn(width, dim, generator=g) * width ** -0.5)
    elif isinstance(getattr(pool, "c_proj", None), torch.nn.Linear):  # ModifiedResNet: the attention pool's output
        width = pool.c_proj.in_features
        lin = torch.nn.Linear(width, dim)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(dim, width, generator=g) * width ** -0.5)
            lin.bias.zero_()
        pool.c_proj = lin
        v.output_dim = dim
    else:
        raise ConfigError("this vision tower has no projection (`proj` or an attention pool's `c_proj`) to replace")
    tp = getattr(model, "text_projection", None)
    if isinstance(tp, torch.nn.Parameter):
        tw = tp.shape[0]
        model.text_projection = torch.nn.Parameter(torch.randn(tw, dim, generator=g) * tw ** -0.5)
    elif isinstance(tp, torch.nn.Linear):
        tw = tp.in_features
        lin = torch.nn.Linear(tw, dim, bias=tp.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(dim, tw, generator=g) * tw ** -0.5)
            if lin.bias is not None:
                lin.bias.zero_()
        model.text_projection = lin
    else:
        raise ConfigError("this text tower has no `text_projection` to replace")
    cfg = copy.deepcopy(model_cfg)
    cfg["embed_dim"] = int(dim)
    return cfg


def count_parameters(model) -> dict:
    vis = {id(p) for p in model.visual.parameters()}
    out = {"vision": [0, 0], "text": [0, 0], "other": [0, 0]}
    for n, p in model.named_parameters():
        key = "vision" if id(p) in vis else ("other" if n in ("logit_scale", "logit_bias") else "text")
        out[key][0 if p.requires_grad else 1] += p.numel()
    res = {k: {"trainable": v[0], "frozen": v[1], "total": v[0] + v[1]} for k, v in out.items()}
    res["total"] = {k: sum(res[t][k] for t in ("vision", "text", "other")) for k in ("trainable", "frozen", "total")}
    return res


# --------------------------------------------------------------------------- checkpoint

def save_checkpoint(model, out_dir: str | Path, model_cfg: dict, preprocess_cfg: dict, info: dict, *, fp16: bool = False) -> Path:
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if fp16 and v.is_floating_point():
            v = v.to(torch.float16)
        sd[k] = v.contiguous()
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(sd, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS_NAME)
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "clipsearch": info}
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------- training

@dataclass
class TrainOptions:
    epochs: float = 10
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    val_fraction: float = 0.05
    val_max: int = 1000
    unfreeze_vision_blocks: int = -1
    unfreeze_text_blocks: int = -1
    new_projection: int | None = None
    freeze_logit_scale: bool = False
    augment: str = "auto"   # auto: shapes augmentation when scenes exist; none: captions as given
    reduce_vocab: bool | None = None  # None: reduce for models trained from scratch
    fp16_weights: bool = False
    num_threads: int | None = None
    grad_clip: float = 1.0
    max_minutes: float | None = None  # time budget: the LR schedule follows the clock, training stops at it (not reproducible)
    image_pair_weight: float = 0.0  # shapes only: extra image-image loss, positives share a (color, shape)
    caption_probs: dict | None = None  # shapes only: ShapesCaptionSampler keyword arguments


@dataclass
class Dataset:
    """Training material in memory: uint8 images (n, 3, H, W) after the model's resize, captions, scenes."""

    images: Any
    captions: list[str]
    scenes: list[dict] | None = None


def _texts_universe(ds: Dataset) -> list[str]:
    from .shapes import domain_vocabulary

    texts = list(ds.captions)
    if ds.scenes is not None:
        texts += domain_vocabulary() + ["object", "thing", "one"]
    return texts


def prepare_model(
    *, arch: str | dict | None = None, model: str | None = None, preprocess_cfg: dict | None = None,
    opts: TrainOptions, texts_for_vocab: Sequence[str] = (),
) -> LoadedModel:
    """The model to train: a new one from an architecture config, or a loaded one, with surgery applied."""
    import torch

    if (arch is None) == (model is None):
        raise ConfigError("give exactly one of an architecture config (from scratch) or --model (fine-tuning)")
    torch.manual_seed(opts.seed)
    if arch is not None:
        model_cfg = read_arch_config(arch)
        token_ids = None
        reduce = True if opts.reduce_vocab is None else opts.reduce_vocab
        if reduce:
            from .vocab import reduced_vocab_size, token_ids_for_texts

            token_ids = token_ids_for_texts(list(texts_for_vocab))
            model_cfg["text_cfg"]["vocab_size"] = reduced_vocab_size(token_ids)
        pp = preprocess_cfg or default_preprocess_cfg(_image_size(model_cfg))
        m = build_model(model_cfg, pp)
        lm = LoadedModel(m, model_cfg, pp, token_ids, "scratch")
    else:
        lm = load_model(model)
    if opts.new_projection:
        lm.model_cfg = replace_projections(lm.model, lm.model_cfg, int(opts.new_projection), seed=opts.seed)
    apply_freezing(lm.model, opts.unfreeze_vision_blocks, opts.unfreeze_text_blocks, opts.freeze_logit_scale)
    return lm


def embed_dataset(lm: LoadedModel, images_u8, captions: Sequence[str], batch: int = 256):
    import torch

    m = lm.model
    was = m.training
    m.eval()
    ims, txs = [], []
    with torch.no_grad():
        for i in range(0, len(captions), batch):
            ims.append(m.encode_image(normalize_batch(images_u8[i:i + batch], lm.preprocess_cfg), normalize=True))
            txs.append(m.encode_text(lm.tokenize(captions[i:i + batch]), normalize=True))
    m.train(was)
    if was:
        _freeze_frozen_batchnorm(m)
    return torch.cat(ims), torch.cat(txs)


def recall_at_1(img, txt) -> float:
    sims = txt @ img.T
    return float((sims.argmax(1) == _arange(len(txt))).float().mean())


def _arange(n):
    import torch

    return torch.arange(n)


def train(
    lm: LoadedModel,
    ds: Dataset,
    opts: TrainOptions,
    callback: Callable[[dict], None] | None = None,
) -> dict:
    """Train lm.model in place on ds; returns a summary (losses, per-epoch validation, time)."""
    import torch
    import torch.nn.functional as F

    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    cb = callback or (lambda e: None)
    n = len(ds.captions)
    if n < 2:
        raise ConfigError("training needs at least 2 captioned images")
    rng = np.random.default_rng(opts.seed)
    torch.manual_seed(opts.seed)
    perm = rng.permutation(n)
    n_val = min(opts.val_max, int(round(n * opts.val_fraction))) if opts.val_fraction > 0 else 0
    n_val = min(n_val, n - 2)
    val_idx, tr_idx = np.sort(perm[:n_val]), perm[n_val:]
    use_scenes = ds.scenes is not None and opts.augment in ("auto", "shapes") and all(s is not None for s in ds.scenes)
    if opts.augment == "shapes" and not use_scenes:
        raise ConfigError("--augment shapes needs scenes.jsonl beside captions.csv")
    sampler = ShapesCaptionSampler(**(opts.caption_probs or {})) if use_scenes else None
    if use_scenes:
        codes = np.stack([scene_codes(s) for s in ds.scenes])
        nobj = np.array([len(s["objects"]) for s in ds.scenes])

    bs = min(opts.batch_size, len(tr_idx))
    steps_per_epoch = max(1, len(tr_idx) // bs)
    total_steps = max(1, int(round(opts.epochs * steps_per_epoch)))
    model = lm.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("bias") else decay).append(p)
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=opts.lr, betas=(0.9, 0.98), eps=1e-6)
    warm = min(opts.warmup_steps, max(1, total_steps // 5))

    budget = opts.max_minutes * 60 if opts.max_minutes else None

    def progress_at(step: int) -> float:
        """Share of the schedule done: by steps, or by the clock when a time budget is set (whichever is further)."""
        p = (step - warm) / max(1, total_steps - warm)
        if budget is not None and step >= warm:
            p = max(p, (time.time() - t0) / budget)
        return min(1.0, p)

    def lr_at(step: int) -> float:
        if step < warm:
            return opts.lr * (step + 1) / warm
        return opts.lr * 0.5 * (1 + math.cos(math.pi * progress_at(step)))

    cb({"event": "start", "total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "n_train": len(tr_idx), "n_val": n_val})
    history, losses = [], []
    t0 = time.time()
    step = 0
    epoch = 0
    stopped_early = False
    model.train()
    _freeze_frozen_batchnorm(model)
    while step < total_steps:
        order = tr_idx[rng.permutation(len(tr_idx))]
        for b in range(steps_per_epoch):
            if step >= total_steps:
                break
            idx = np.sort(order[b * bs:(b + 1) * bs])
            images = normalize_batch(ds.images[torch.from_numpy(idx)], lm.preprocess_cfg)
            if sampler is not None:
                texts, cons, comp = [], [], []
                for i in idx:
                    t, c, full = sampler.sample(ds.scenes[i], rng)
                    texts.append(t)
                    cons.append(c)
                    comp.append(full)
                M = match_matrix(codes[idx], nobj[idx], np.stack(cons), np.array(comp))
                np.fill_diagonal(M, True)
                target = torch.from_numpy(M.astype(np.float32))
            else:
                texts = [ds.captions[i] for i in idx]
                same = np.array(texts, dtype=object)
                target = torch.from_numpy((same[:, None] == same[None, :]).astype(np.float32))
            tokens = lm.tokenize(texts)
            for g in optim.param_groups:
                g["lr"] = lr_at(step)
            img_f = model.encode_image(images, normalize=True)
            txt_f = model.encode_text(tokens, normalize=True)
            scale = model.logit_scale.exp()
            logits = scale * img_f @ txt_f.T
            t_i2t = target / target.sum(1, keepdim=True)
            t_t2i = target.T / target.T.sum(1, keepdim=True)
            loss = 0.5 * (-(t_i2t * F.log_softmax(logits, 1)).sum(1).mean() - (t_t2i * F.log_softmax(logits.T, 1)).sum(1).mean())
            if sampler is not None and opts.image_pair_weight > 0:
                loss = loss + opts.image_pair_weight * _image_pair_loss(img_f, scale, codes[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
            optim.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(float(loss.detach()))
            step += 1
            cb({"event": "step", "step": step, "loss": losses[-1], "logit_scale": float(model.logit_scale.detach().exp()), "lr": lr_at(step - 1)})
            if budget is not None and (time.time() - t0) > budget:
                stopped_early = True  # the time budget ran out (the cosine schedule followed the clock)
                break
        epoch += 1
        rec = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses[-steps_per_epoch:])), "seconds": round(time.time() - t0, 1)}
        if n_val:
            vi = torch.from_numpy(val_idx)
            img, txt = embed_dataset(lm, ds.images[vi], [ds.captions[i] for i in val_idx])
            rec["val_recall@1"] = recall_at_1(img, txt)
        history.append(rec)
        cb({"event": "epoch", **rec})
        if stopped_early:
            break
    return {
        "steps": step,
        "epochs": epoch,
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-max(1, min(20, len(losses))):])),
        "losses": losses,
        "history": history,
        "seconds": round(time.time() - t0, 1),
        "n_train": int(len(tr_idx)),
        "n_val": int(n_val),
        "stopped_early": stopped_early,
        "augment": "shapes" if use_scenes else "none",
    }


def _freeze_frozen_batchnorm(model) -> None:
    """BatchNorm layers whose weights are frozen keep their running statistics too (eval mode), as
    open_clip's own `lock` does for a ResNet tower; otherwise "frozen" blocks would still drift."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def _image_pair_loss(img_f, scale, codes: np.ndarray):
    """Multi-positive image-to-image cross-entropy: positives share a (color, shape) pair."""
    import torch
    import torch.nn.functional as F

    pair = np.where(codes[:, :, 0] == -9, -1, codes[:, :, 1] * 16 + codes[:, :, 2])  # (B, 2)
    share = ((pair[:, None, :, None] == pair[None, :, None, :]) & (pair[:, None, :, None] >= 0)).any((2, 3))
    np.fill_diagonal(share, False)
    rows = share.any(1)
    if not rows.any():
        return img_f.sum() * 0.0
    logits = scale * img_f @ img_f.T
    logits = logits.masked_fill(torch.eye(len(codes), dtype=torch.bool), float("-inf"))
    target = torch.from_numpy(share[rows].astype(np.float32))
    target = target / target.sum(1, keepdim=True)
    logp = F.log_softmax(logits[torch.from_numpy(rows)], 1)
    logp = torch.where(target > 0, logp, torch.zeros_like(logp))
    return -(target * logp).sum(1).mean()


def checkpoint_info(lm: LoadedModel, opts: TrainOptions, summary: dict, data_desc: str) -> dict:
    info = {
        "trained_from": lm.source,
        "data": data_desc,
        "options": {k: v for k, v in asdict(opts).items()},
        "summary": {k: v for k, v in summary.items() if k != "losses"},
    }
    if lm.token_ids:
        info["token_ids"] = list(lm.token_ids)
    return info


def train_folder(
    folder: str | Path,
    out_dir: str | Path,
    *,
    arch: str | dict | None = None,
    model: str | None = None,
    opts: TrainOptions | None = None,
    callback: Callable[[dict], None] | None = None,
) -> dict:
    """Train on a captioned folder and write the checkpoint directory; returns the summary."""
    import torch

    opts = opts or TrainOptions()
    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    folder = Path(folder)
    items = read_captioned_folder(folder)
    scenes = [it.scene for it in items]
    ds_scenes = scenes if all(s is not None for s in scenes) else None
    pre = Dataset(None, [it.caption for it in items], ds_scenes)
    lm = prepare_model(arch=arch, model=model, opts=opts, texts_for_vocab=_texts_universe(pre))
    cb = callback or (lambda e: None)
    cb({"event": "loading", "n": len(items)})
    images = load_folder_images(folder, items, lm.preprocess_cfg, progress=lambda k: cb({"event": "loaded", "k": k}))
    ds = Dataset(images, pre.captions, ds_scenes)
    summary = train(lm, ds, opts, callback)
    info = checkpoint_info(lm, opts, summary, str(folder))
    save_checkpoint(lm.model, out_dir, lm.model_cfg, lm.preprocess_cfg, info, fp16=opts.fp16_weights)
    summary["out_dir"] = str(out_dir)
    summary["parameters"] = count_parameters(lm.model)
    return summary
