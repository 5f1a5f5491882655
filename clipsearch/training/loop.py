"""The training loop: contrastive image-text training of a prepared model on a Dataset in memory.

Loss: symmetric cross-entropy over the batch similarity matrix `scale * I @ T^T` against the
batch's multi-positive targets (see captions.py), with a learnable logit scale clamped at ln(100);
for shapes data an optional image-image term. AdamW, linear warm-up then cosine decay, gradient
clipping. A held-out split is measured after every epoch (text-to-image recall@1).

Reproducible: the split, shuffling and caption sampling draw from a numpy Generator seeded with
opts.seed, and torch's own draws (dropout, if any) run under `rng.seeded_torch`; the same seed and
torch thread count give the same weights. Not with a time budget (opts.max_minutes): the schedule
then follows the clock and the run stops where the clock says.

Nothing here prints: progress goes to a callback (the CLI turns it into a tqdm bar).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .captions import BatchTexts, batch_texts_for
from .data import Dataset, normalize_batch
from .models import MAX_LOGIT_SCALE, LoadedModel
from .options import TrainOptions
from .prepare import freeze_frozen_batchnorm
from .rng import seeded_torch


def train(
    lm: LoadedModel,
    ds: Dataset,
    opts: TrainOptions,
    callback: Callable[[dict], None] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Train lm.model in place on ds; returns a summary (losses, per-epoch validation, time).

    callback gets {"event": "start" | "step" | "epoch", ...}; clock gives the seconds the time
    budget and the reported durations are measured in."""
    cb = callback or (lambda e: None)
    rng = np.random.default_rng(opts.seed)
    train_idx, val_idx = split_dataset(len(ds.captions), opts, rng)
    texts = batch_texts_for(ds.captions, ds.scenes, opts.augment, opts.caption_probs)
    sched = Schedule.for_run(len(train_idx), opts, clock)
    optim, params = make_optimizer(lm.model, opts)
    cb({"event": "start", "total_steps": sched.total_steps, "steps_per_epoch": sched.steps_per_epoch,
        "n_train": len(train_idx), "n_val": len(val_idx)})
    with seeded_torch(opts.seed):
        sched.start()
        losses, history, stopped_early = _run_epochs(lm, ds, opts, texts, train_idx, val_idx, sched, optim, params, rng, cb)
    return _summary(losses, history, sched, train_idx, val_idx, stopped_early, texts)


def _run_epochs(lm, ds, opts, texts, train_idx, val_idx, sched, optim, params, rng, cb):
    """Epochs until the step count (or the time budget) is reached; returns (losses, history, stopped_early)."""
    losses: list[float] = []
    history: list[dict] = []
    stopped_early = False
    lm.model.train()
    freeze_frozen_batchnorm(lm.model)
    while len(losses) < sched.total_steps:
        order = train_idx[rng.permutation(len(train_idx))]
        for b in range(sched.steps_per_epoch):
            step = len(losses)
            if step >= sched.total_steps:
                break
            idx = np.sort(order[b * sched.batch_size:(b + 1) * sched.batch_size])
            lr = sched.lr_at(step)
            losses.append(_train_step(lm, ds, texts, idx, rng, optim, params, lr, opts))
            cb({"event": "step", "step": step + 1, "loss": losses[-1],
                "logit_scale": float(lm.model.logit_scale.detach().exp()), "lr": lr})
            if sched.out_of_time():
                stopped_early = True  # the time budget ran out (the cosine schedule followed the clock)
                break
        rec = _end_epoch(lm, ds, val_idx, len(history) + 1, losses, sched)
        history.append(rec)
        cb({"event": "epoch", **rec})
        if stopped_early:
            break
    return losses, history, stopped_early


def split_dataset(n: int, opts: TrainOptions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train indices in shuffled order, sorted held-out indices); at least 2 images stay for training."""
    if n < 2:
        raise ConfigError("training needs at least 2 captioned images")
    perm = rng.permutation(n)
    n_val = min(opts.val_max, int(round(n * opts.val_fraction))) if opts.val_fraction > 0 else 0
    n_val = min(n_val, n - 2)
    return perm[n_val:], np.sort(perm[:n_val])


@dataclass
class Schedule:
    """Steps, batch size and learning rate of a run: linear warm-up, then cosine decay by steps, or
    by the clock when a time budget is set (whichever is further)."""

    lr: float
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    budget_s: float | None
    clock: Callable[[], float]
    t0: float = 0.0

    @classmethod
    def for_run(cls, n_train: int, opts: TrainOptions, clock: Callable[[], float]) -> "Schedule":
        bs = min(opts.batch_size, n_train)
        steps_per_epoch = max(1, n_train // bs)
        total_steps = max(1, int(round(opts.epochs * steps_per_epoch)))
        warm = min(opts.warmup_steps, max(1, total_steps // 5))
        budget = opts.max_minutes * 60 if opts.max_minutes else None
        return cls(opts.lr, bs, steps_per_epoch, total_steps, warm, budget, clock)

    def start(self) -> None:
        self.t0 = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.elapsed() > self.budget_s

    def progress(self, step: int) -> float:
        """Share of the decay done at this step."""
        p = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        if self.budget_s is not None and step >= self.warmup:
            p = max(p, self.elapsed() / self.budget_s)
        return min(1.0, p)

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        return self.lr * 0.5 * (1 + math.cos(math.pi * self.progress(step)))


def make_optimizer(model, opts: TrainOptions):
    """AdamW over the trainable parameters (no weight decay for gains, biases, embeddings, the logit
    scale); returns (optimizer, trainable parameters)."""
    import torch

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
    return optim, params


def _train_step(lm: LoadedModel, ds: Dataset, texts: BatchTexts, idx: np.ndarray, rng: np.random.Generator,
                optim, params, lr: float, opts: TrainOptions) -> float:
    """One optimiser step on the batch `idx`; returns its loss."""
    import torch

    model = lm.model
    images = normalize_batch(ds.images[torch.from_numpy(idx)], lm.preprocess_cfg)
    batch_texts, target = texts.batch(idx, rng)
    tokens = lm.tokenize(batch_texts)
    for g in optim.param_groups:
        g["lr"] = lr
    img_f = model.encode_image(images, normalize=True)
    txt_f = model.encode_text(tokens, normalize=True)
    scale = model.logit_scale.exp()
    loss = contrastive_loss(img_f, txt_f, scale, target)
    if texts.augmented and opts.image_pair_weight > 0:
        loss = loss + opts.image_pair_weight * image_pair_loss(img_f, scale, texts.codes[idx])
    optim.zero_grad(set_to_none=True)
    loss.backward()
    if opts.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
    optim.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return float(loss.detach())


def contrastive_loss(img_f, txt_f, scale, target):
    """Symmetric multi-positive cross-entropy of `scale * img_f @ txt_f.T` (target rows: images)."""
    import torch.nn.functional as F

    logits = scale * img_f @ txt_f.T
    t_i2t = target / target.sum(1, keepdim=True)
    t_t2i = target.T / target.T.sum(1, keepdim=True)
    return 0.5 * (-(t_i2t * F.log_softmax(logits, 1)).sum(1).mean() - (t_t2i * F.log_softmax(logits.T, 1)).sum(1).mean())


def image_pair_loss(img_f, scale, codes: np.ndarray):
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


def _end_epoch(lm: LoadedModel, ds: Dataset, val_idx: np.ndarray, epoch: int, losses: list[float], sched: Schedule) -> dict:
    """The epoch's record: mean train loss of its last steps, and held-out recall@1 when there is a split."""
    import torch

    rec = {"epoch": epoch, "step": len(losses), "train_loss": float(np.mean(losses[-sched.steps_per_epoch:])),
           "seconds": round(sched.elapsed(), 1)}
    if len(val_idx):
        img, txt = embed_dataset(lm, ds.images[torch.from_numpy(val_idx)], [ds.captions[i] for i in val_idx])
        rec["val_recall@1"] = recall_at_1(img, txt)
    return rec


def _summary(losses, history, sched: Schedule, train_idx, val_idx, stopped_early: bool, texts: BatchTexts) -> dict:
    import torch

    return {
        "steps": len(losses),
        "epochs": len(history),
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-max(1, min(20, len(losses))):])),
        "losses": losses,
        "history": history,
        "seconds": round(sched.elapsed(), 1),
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "stopped_early": stopped_early,
        "augment": "shapes" if texts.augmented else "none",
        "torch_threads": torch.get_num_threads(),  # the same seed gives the same weights on as many threads
    }


def embed_dataset(lm: LoadedModel, images_u8, captions: Sequence[str], batch: int = 256):
    """Normalised (image, text) embeddings of uint8 images and their captions, in eval mode."""
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
        freeze_frozen_batchnorm(m)
    return torch.cat(ims), torch.cat(txs)


def recall_at_1(img, txt) -> float:
    """Share of texts whose own image (same row) is the most similar."""
    import torch

    sims = txt @ img.T
    return float((sims.argmax(1) == torch.arange(len(txt))).float().mean())
