"""The model a run trains: built or loaded, then reshaped (new projections) and partly frozen.

`prepare_model` is the one entry: from scratch (an architecture config; the vocabulary reduced to
the data's tokens unless told otherwise) or fine-tuning (anything `--model` accepts). Freezing
keeps each tower's last N residual blocks, its final norm and its projection trainable; for a
ResNet image tower (open_clip's ModifiedResNet) the blocks are its bottleneck blocks in order and
the head is the attention pool, and BatchNorm layers of frozen blocks keep their statistics.
"""

from __future__ import annotations

import copy
from typing import Sequence

from ..errors import ConfigError
from .models import LoadedModel, build_model, default_preprocess_cfg, image_size, load_model, read_arch_config
from .options import TrainOptions
from .rng import seeded_torch


def prepare_model(
    *, arch: str | dict | None = None, model: str | None = None, preprocess_cfg: dict | None = None,
    opts: TrainOptions, texts_for_vocab: Sequence[str] = (),
) -> LoadedModel:
    """The model to train: a new one from an architecture config, or a loaded one, with surgery applied.

    A new model's initial weights (and a new projection) depend only on opts.seed."""
    if (arch is None) == (model is None):
        raise ConfigError("give exactly one of an architecture config (from scratch) or --model (fine-tuning)")
    with seeded_torch(opts.seed):  # module construction draws from torch's default generator
        lm = _new_model(arch, preprocess_cfg, opts, texts_for_vocab) if arch is not None else load_model(model)
        if opts.new_projection:
            lm.model_cfg = replace_projections(lm.model, lm.model_cfg, int(opts.new_projection), seed=opts.seed)
    apply_freezing(lm.model, opts.unfreeze_vision_blocks, opts.unfreeze_text_blocks, opts.freeze_logit_scale)
    return lm


def _new_model(arch: str | dict, preprocess_cfg: dict | None, opts: TrainOptions, texts_for_vocab: Sequence[str]) -> LoadedModel:
    model_cfg = read_arch_config(arch)
    token_ids = None
    reduce = True if opts.reduce_vocab is None else opts.reduce_vocab
    if reduce:
        from .vocab import reduced_vocab_size, token_ids_for_texts

        token_ids = token_ids_for_texts(list(texts_for_vocab))
        model_cfg["text_cfg"]["vocab_size"] = reduced_vocab_size(token_ids)
    pp = preprocess_cfg or default_preprocess_cfg(image_size(model_cfg))
    return LoadedModel(build_model(model_cfg, pp), model_cfg, pp, token_ids, "scratch")


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
        pool.c_proj = _linear(torch.randn(dim, width, generator=g) * width ** -0.5, bias=True)
        v.output_dim = dim
    else:
        raise ConfigError("this vision tower has no projection (`proj` or an attention pool's `c_proj`) to replace")
    tp = getattr(model, "text_projection", None)
    if isinstance(tp, torch.nn.Parameter):
        tw = tp.shape[0]
        model.text_projection = torch.nn.Parameter(torch.randn(tw, dim, generator=g) * tw ** -0.5)
    elif isinstance(tp, torch.nn.Linear):
        tw = tp.in_features
        model.text_projection = _linear(torch.randn(dim, tw, generator=g) * tw ** -0.5, bias=tp.bias is not None)
    else:
        raise ConfigError("this text tower has no `text_projection` to replace")
    cfg = copy.deepcopy(model_cfg)
    cfg["embed_dim"] = int(dim)
    return cfg


def _linear(weight, *, bias: bool):
    """A Linear layer holding `weight` (out, in) and a zero bias, built without drawing random numbers."""
    import torch

    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias, device="meta").to_empty(device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if lin.bias is not None:
            lin.bias.zero_()
    return lin


def count_parameters(model) -> dict:
    vis = {id(p) for p in model.visual.parameters()}
    out = {"vision": [0, 0], "text": [0, 0], "other": [0, 0]}
    for n, p in model.named_parameters():
        key = "vision" if id(p) in vis else ("other" if n in ("logit_scale", "logit_bias") else "text")
        out[key][0 if p.requires_grad else 1] += p.numel()
    res = {k: {"trainable": v[0], "frozen": v[1], "total": v[0] + v[1]} for k, v in out.items()}
    res["total"] = {k: sum(res[t][k] for t in ("vision", "text", "other")) for k in ("trainable", "frozen", "total")}
    return res


def freeze_frozen_batchnorm(model) -> None:
    """BatchNorm layers whose weights are frozen keep their running statistics too (eval mode), as
    open_clip's own `lock` does for a ResNet tower; otherwise "frozen" blocks would still drift."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
