"""Writing a checkpoint directory, and refusing to write one over another.

A library records the weights it was built with; a checkpoint overwritten in place under it would
leave that library refusing every query. So `train` writes only into a directory that does not
exist yet or is empty, unless told to overwrite.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..errors import ModelError
from .models import CONFIG_NAME, WEIGHTS_FALLBACK_NAME, WEIGHTS_NAME, LoadedModel
from .options import TrainOptions

CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_FALLBACK_NAME)


class CheckpointExistsError(ModelError):
    """The output directory already holds a checkpoint (or other files)."""


def check_out_dir(out_dir: str | Path, *, overwrite: bool = False) -> None:
    """Raise CheckpointExistsError unless `out_dir` is missing or empty (any directory when overwrite)."""
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckpointExistsError(f"{out} exists and is not a directory; choose another --out")
    if overwrite:
        return
    if any((out / name).exists() for name in CHECKPOINT_FILES):
        raise CheckpointExistsError(
            f"{out} already holds a checkpoint; choose a new --out directory, or add --overwrite to replace it "
            "(libraries indexed with the old weights will then refuse queries)")
    if any(out.iterdir()):
        raise CheckpointExistsError(f"{out} is not empty; choose a new or empty --out directory (or add --overwrite)")


def save_checkpoint(model, out_dir: str | Path, model_cfg: dict, preprocess_cfg: dict, info: dict, *, fp16: bool = False) -> Path:
    """Write the model's state dict (safetensors) and its config into out_dir, replacing what is there."""
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


def checkpoint_info(lm: LoadedModel, opts: TrainOptions, summary: dict, data_desc: str) -> dict:
    """The `clipsearch` section of a checkpoint's config: where it came from and how it was trained."""
    info = {
        "trained_from": lm.source,
        "data": data_desc,
        "options": {k: v for k, v in asdict(opts).items()},
        "summary": {k: v for k, v in summary.items() if k != "losses"},
    }
    if lm.token_ids:
        info["token_ids"] = list(lm.token_ids)
    return info
