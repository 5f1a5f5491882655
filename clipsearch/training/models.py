"""The models training works on: built new from an open_clip config, or loaded with their weights.

A checkpoint directory holds `open_clip_config.json` = {"model_cfg", "preprocess_cfg",
"clipsearch": {...}} and `open_clip_model.safetensors`, which open_clip's `local-dir:` schema and
clipsearch's `--model DIR` read. A model with a reduced vocabulary (see vocab.py) records the kept
tokenizer ids in `clipsearch.token_ids`.

New models draw their initial weights from torch's default generator (open_clip's modules take no
Generator); callers that want them reproducible build them under `rng.seeded_torch(seed)`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, ModelUnavailableError
from .data import OPENAI_MEAN, OPENAI_STD

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
WEIGHTS_FALLBACK_NAME = "open_clip_pytorch_model.bin"
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


class RandomInitNotice(logging.Filter):
    """A logging filter that drops open_clip's notices that a model was built without weights.

    Training builds such models on purpose (new weights from scratch, or a config-only model that
    a checkpoint's weights then fill) and `inspect` describes architectures without weights.
    open_clip logs these notices through the root logger, so a caller that wants them gone adds
    this filter to `logging.getLogger()` (the CLI does); nothing here installs it.
    """

    PREFIXES = ("Local config loaded, but no CLIP weights found", "No pretrained weights loaded for model")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


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


def image_size(model_cfg: dict) -> int:
    s = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(s[0] if isinstance(s, (list, tuple)) else s)


def build_model(model_cfg: dict, preprocess_cfg: dict | None = None):
    """A randomly initialised open_clip model from an open_clip model config dict.

    open_clip logs that the model has no weights (see RandomInitNotice)."""
    import open_clip
    import torch

    cfg = copy.deepcopy(model_cfg)
    pp = preprocess_cfg or default_preprocess_cfg(image_size(cfg))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / CONFIG_NAME).write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pp}))
        try:
            model = open_clip.create_model("local-dir:" + d, load_weights=False)
        except Exception as e:  # noqa: BLE001 - open_clip raises many kinds
            raise ConfigError(f"invalid open_clip model config: {e}") from e
    with torch.no_grad():
        if hasattr(model, "logit_scale"):
            model.logit_scale.fill_(INIT_LOGIT_SCALE)
    return model


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
    from ..encoders import parse_model_spec

    spec = parse_model_spec(name)
    if spec.kind in ("builtin", "dir"):
        return _load_checkpoint_dir(spec.path, spec.name)
    if spec.kind in ("pretrained", "file"):
        return _load_pretrained(spec, name)
    raise ModelUnavailableError(f"fine-tuning from {name!r} ({spec.kind}) is not supported; use a checkpoint directory or ARCH:PRETRAINED")


def _load_checkpoint_dir(path: Path, source: str) -> LoadedModel:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelUnavailableError(f"{path} has no {CONFIG_NAME}")
    full = json.loads(cfg_path.read_text())
    model_cfg = full["model_cfg"]
    pp = full.get("preprocess_cfg") or default_preprocess_cfg(image_size(model_cfg))
    extra_info = full.get("clipsearch", {}) or {}
    model = build_model(model_cfg, pp)
    weights = path / WEIGHTS_NAME
    if weights.is_file():
        from safetensors.torch import load_file

        sd = load_file(str(weights))
    else:
        import torch

        pt = path / WEIGHTS_FALLBACK_NAME
        if not pt.is_file():
            raise ModelUnavailableError(f"{path} has no {WEIGHTS_NAME}")
        sd = torch.load(str(pt), map_location="cpu", weights_only=True)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelUnavailableError(f"weights in {path} do not fit its config: {e}") from e
    return LoadedModel(model, model_cfg, pp, extra_info.get("token_ids"), source, {"clipsearch": extra_info})


def _load_pretrained(spec, name: str) -> LoadedModel:
    import open_clip

    arch = spec.arch
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ModelUnavailableError(f"unknown open_clip architecture {arch!r}")
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            arch, pretrained=str(spec.path) if spec.kind == "file" else spec.pretrained, require_pretrained=True
        )
    except Exception as e:  # noqa: BLE001
        raise ModelUnavailableError(f"cannot load {name}: {e}") from e
    pp = dict(model.visual.preprocess_cfg) if hasattr(model.visual, "preprocess_cfg") else default_preprocess_cfg(image_size(model_cfg))
    lm = LoadedModel(model, copy.deepcopy(model_cfg), pp, None, spec.name)
    lm.extra["tokenizer"] = open_clip.get_tokenizer(arch)
    return lm
