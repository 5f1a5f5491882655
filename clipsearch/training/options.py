"""The settings of one training run (what `clipsearch train`'s options become)."""

from __future__ import annotations

from dataclasses import dataclass


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
    grad_clip: float = 1.0
    max_minutes: float | None = None  # time budget: the LR schedule follows the clock, training stops at it (not reproducible)
    image_pair_weight: float = 0.0  # shapes only: extra image-image loss, positives share a (color, shape)
    caption_probs: dict | None = None  # shapes only: ShapesCaptionSampler keyword arguments
