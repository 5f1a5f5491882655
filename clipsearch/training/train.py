"""Contrastive image-text training (CLIP) on a captioned folder, from scratch or fine-tuning.

`train_folder` is what `clipsearch train` runs: read the folder, prepare the model, load the
images, train, write the checkpoint directory. Its parts, one job a module:

    data.py        captioned folders, image preprocessing, the in-memory Dataset
    captions.py    the texts of a batch and its multi-positive targets (shapes augmentation)
    models.py      building and loading open_clip models; the checkpoint directory's names
    prepare.py     the model a run trains: new or loaded, new projections, freezing
    loop.py        the training loop (loss, schedule, optimiser, held-out recall)
    checkpoint.py  writing a checkpoint, refusing to write one over another
    options.py     TrainOptions;  rng.py: seeded randomness that leaves the caller's alone

Library code: nothing here prints, sets torch's thread count, seeds torch's global generator or
changes logging; the CLI (clipsearch/cli_training.py) and scripts/train_demo_model.py set those.
The names below are re-exported for callers of the single module this used to be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .captions import BatchTexts, ShapesCaptionSampler, batch_texts_for, match_matrix, scene_codes
from .checkpoint import CheckpointExistsError, check_out_dir, checkpoint_info, save_checkpoint
from .data import (
    CaptionedItem, Dataset, load_folder_images, normalize_batch, pil_transform, preprocess_to_uint8, read_captioned_folder,
    resolve_image_path, texts_universe,
)
from .loop import embed_dataset, recall_at_1, train
from .models import (
    CONFIG_NAME, INIT_LOGIT_SCALE, MAX_LOGIT_SCALE, WEIGHTS_NAME, LoadedModel, RandomInitNotice, build_model,
    default_preprocess_cfg, load_model, read_arch_config,
)
from .options import TrainOptions
from .prepare import apply_freezing, count_parameters, prepare_model, replace_projections

__all__ = [
    "BatchTexts", "CONFIG_NAME", "CaptionedItem", "CheckpointExistsError", "Dataset", "INIT_LOGIT_SCALE", "LoadedModel",
    "MAX_LOGIT_SCALE", "RandomInitNotice", "ShapesCaptionSampler", "TrainOptions", "WEIGHTS_NAME", "apply_freezing",
    "batch_texts_for", "build_model", "check_out_dir", "checkpoint_info", "count_parameters", "default_preprocess_cfg",
    "embed_dataset", "load_folder_images", "load_model", "match_matrix", "normalize_batch", "pil_transform",
    "prepare_model", "preprocess_to_uint8", "read_arch_config", "read_captioned_folder", "recall_at_1",
    "replace_projections", "resolve_image_path", "save_checkpoint", "scene_codes", "texts_universe", "train",
    "train_folder",
]


def train_folder(
    folder: str | Path,
    out_dir: str | Path,
    *,
    arch: str | dict | None = None,
    model: str | None = None,
    opts: TrainOptions | None = None,
    callback: Callable[[dict], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Train on a captioned folder and write the checkpoint directory out_dir; returns the summary.

    out_dir must not exist or be empty (CheckpointExistsError otherwise, before any work), unless
    overwrite: then a checkpoint there is replaced."""
    opts = opts or TrainOptions()
    cb = callback or (lambda e: None)
    check_out_dir(out_dir, overwrite=overwrite)
    folder = Path(folder)
    items = read_captioned_folder(folder)
    scenes = [it.scene for it in items]
    captions = Dataset(None, [it.caption for it in items], scenes if all(s is not None for s in scenes) else None)
    lm = prepare_model(arch=arch, model=model, opts=opts, texts_for_vocab=texts_universe(captions))
    cb({"event": "loading", "n": len(items)})
    images = load_folder_images(folder, items, lm.preprocess_cfg, progress=lambda k: cb({"event": "loaded", "k": k}))
    summary = train(lm, Dataset(images, captions.captions, captions.scenes), opts, callback)
    check_out_dir(out_dir, overwrite=overwrite)  # again: another run may have written there meanwhile
    save_checkpoint(lm.model, out_dir, lm.model_cfg, lm.preprocess_cfg, checkpoint_info(lm, opts, summary, str(folder)),
                    fp16=opts.fp16_weights)
    summary["out_dir"] = str(out_dir)
    summary["parameters"] = count_parameters(lm.model)
    return summary
