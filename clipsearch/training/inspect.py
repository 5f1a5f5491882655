"""Describe a CLIP model: its towers, their shapes, and parameter counts (trainable and frozen).

`describe(name)` accepts anything `--model` accepts, plus a bare open_clip architecture name
(`ViT-B-32`), which is built with random weights: inspect only describes, it never embeds.
open_clip logs that such a model has no weights; callers that want that quiet install
models.RandomInitNotice (the CLI does).
"""

from __future__ import annotations

from typing import Any


def _vision_info(model, cfg: dict) -> dict:
    v = model.visual
    vc = cfg.get("vision_cfg", {})
    info: dict[str, Any] = {"type": type(v).__name__}
    if "timm_model_name" in vc:
        info["timm_model"] = vc["timm_model_name"]
    image_size = getattr(v, "image_size", None) or vc.get("image_size")
    if isinstance(image_size, (list, tuple)):
        image_size = list(image_size)
    info["image_size"] = image_size
    patch = getattr(v, "patch_size", None) or vc.get("patch_size")
    if isinstance(patch, (list, tuple)):
        patch = list(patch) if patch[0] != patch[-1] else patch[0]
    info["patch_size"] = patch
    t = getattr(v, "transformer", None)
    if t is not None and hasattr(t, "resblocks"):
        info["layers"] = len(t.resblocks)
        info["width"] = int(getattr(t, "width", vc.get("width")))
        attn = getattr(t.resblocks[0], "attn", None)
        heads = getattr(attn, "num_heads", None)
        info["heads"] = int(heads) if heads else None
        fc = getattr(getattr(t.resblocks[0], "mlp", None), "c_fc", None)
        if fc is not None:
            info["mlp_width"] = int(fc.out_features)
    else:
        info["layers"] = vc.get("layers")
        info["width"] = vc.get("width")
    grid = getattr(v, "grid_size", None)
    if grid:
        info["tokens"] = int(grid[0] * grid[1]) + (1 if getattr(v, "class_embedding", None) is not None else 0)
    pool = getattr(v, "attnpool", None)  # ModifiedResNet: stride-32 feature map, attention-pooled
    if pool is not None and isinstance(image_size, int):
        info["grid"] = f"{image_size // 32}x{image_size // 32}"
        info["heads"] = int(pool.num_heads)
        info["projection"] = [int(pool.c_proj.in_features), int(pool.c_proj.out_features)]
    proj = getattr(v, "proj", None)
    if proj is not None and hasattr(proj, "shape"):
        info["projection"] = list(proj.shape)
    return info


def _text_info(model, cfg: dict, token_ids) -> dict:
    tc = cfg.get("text_cfg", {})
    info: dict[str, Any] = {}
    if "hf_model_name" in tc:
        info["hf_model"] = tc["hf_model_name"]
    t = getattr(model, "transformer", None)
    if t is None and hasattr(model, "text"):
        t = getattr(model.text, "transformer", None)
        info["type"] = type(model.text).__name__
    else:
        info["type"] = "TextTransformer"
    info["context_length"] = int(getattr(model, "context_length", tc.get("context_length", 77)))
    info["vocab_size"] = int(getattr(model, "vocab_size", tc.get("vocab_size", 49408)))
    if token_ids:
        info["reduced_vocab"] = f"{len(token_ids)} kept tokenizer ids + pad + UNK"
    if t is not None and hasattr(t, "resblocks"):
        info["layers"] = len(t.resblocks)
        info["width"] = int(getattr(t, "width", tc.get("width")))
        attn = getattr(t.resblocks[0], "attn", None)
        heads = getattr(attn, "num_heads", None)
        info["heads"] = int(heads) if heads else None
    else:
        info["layers"] = tc.get("layers")
        info["width"] = tc.get("width")
    tp = getattr(model, "text_projection", None)
    if tp is not None:
        info["projection"] = list(tp.shape) if hasattr(tp, "shape") else [tp.in_features, tp.out_features]
    return info


def describe_model(model, model_cfg: dict, *, name: str, weights: str, token_ids=None) -> dict:
    from .prepare import count_parameters

    ls = getattr(model, "logit_scale", None)
    out = {
        "model": name,
        "weights": weights,
        "embed_dim": int(model_cfg.get("embed_dim")),
        "vision": _vision_info(model, model_cfg),
        "text": _text_info(model, model_cfg, token_ids),
        "parameters": count_parameters(model),
    }
    if ls is not None:
        out["logit_scale"] = {"value": float(ls.detach().exp()), "log": float(ls.detach()), "trainable": bool(ls.requires_grad),
                              "max": 100.0}
    return out


def describe(name: str | None = None) -> dict:
    """Description of a model spec or bare open_clip architecture name (see module doc)."""
    import open_clip

    from ..encoders import DEFAULT_MODEL, parse_model_spec
    from ..errors import ConfigError, ModelUnavailableError
    from .models import load_model

    name = name or DEFAULT_MODEL
    if ":" not in name and open_clip.get_model_config(name) is not None and not _is_path(name):
        model = open_clip.create_model(name, pretrained=None)
        return describe_model(model, open_clip.get_model_config(name), name=name, weights="none (architecture only, random init)")
    spec = parse_model_spec(name)
    try:
        lm = load_model(name)
        weights = "loaded"
    except ModelUnavailableError as e:
        if spec.kind in ("pretrained", "file") and open_clip.get_model_config(spec.arch) is not None:
            model = open_clip.create_model(spec.arch, pretrained=None)
            return describe_model(model, open_clip.get_model_config(spec.arch), name=name,
                                  weights=f"not available here ({str(e).splitlines()[0][:120]}); architecture only")
        raise
    except ConfigError:
        raise
    return describe_model(lm.model, lm.model_cfg, name=spec.name if spec.kind != "builtin" else name, weights=weights,
                          token_ids=lm.token_ids)


def _is_path(name: str) -> bool:
    import os

    return os.path.exists(os.path.expanduser(name))


def format_description(d: dict) -> str:
    """Human-readable text of describe()'s dict."""
    v, t, p = d["vision"], d["text"], d["parameters"]
    lines = [f"model        {d['model']}", f"weights      {d['weights']}", f"embed dim    {d['embed_dim']}"]
    if "logit_scale" in d:
        ls = d["logit_scale"]
        lines.append(f"logit scale  {ls['value']:.3f} (log {ls['log']:.4f}; {'learnable' if ls['trainable'] else 'frozen'}; clamped at {ls['max']:g})")
    vparts = [v.get("type", "")]
    for k in ("timm_model", "image_size", "patch_size", "tokens", "layers", "width", "grid", "heads", "mlp_width", "projection"):
        if v.get(k) is not None:
            vparts.append(f"{k.replace('_', ' ')} {v[k]}")
    lines.append("vision       " + ", ".join(str(x) for x in vparts if x != ""))
    tparts = [t.get("type", "")]
    for k in ("hf_model", "context_length", "vocab_size", "reduced_vocab", "layers", "width", "heads", "projection"):
        if t.get(k) is not None:
            tparts.append(f"{k.replace('_', ' ')} {t[k]}")
    lines.append("text         " + ", ".join(str(x) for x in tparts if x != ""))
    lines.append("")
    lines.append(f"{'parameters':<12} {'total':>14} {'trainable':>14} {'frozen':>14}")
    for k in ("vision", "text", "other", "total"):
        label = "logit scale" if k == "other" else k
        lines.append(f"{label:<12} {p[k]['total']:>14,} {p[k]['trainable']:>14,} {p[k]['frozen']:>14,}")
    return "\n".join(lines)


