"""The texts of a training batch and which image-text pairs of it count as matches.

Plain captioned folders train on their captions as given (two images with the same caption match
each other's text). Shapes folders (with scenes.jsonl) are augmented: per image and step, the full
caption (sometimes with its two objects in the other order) or a partial description of one object
("a red circle", "a star at the top"), with multi-positive targets, so that an image matching a
partial description is never a negative for it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ConfigError

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


class BatchTexts:
    """Texts and targets of training batches: `batch(idx, rng)` -> (texts, target (B, B) float tensor,
    row a = image a, column b = text b, 1 where the text describes the image)."""

    def __init__(self, captions: Sequence[str], scenes: Sequence[dict] | None = None,
                 sampler: ShapesCaptionSampler | None = None):
        self.captions = list(captions)
        self.scenes = scenes
        self.sampler = sampler
        self.codes = np.stack([scene_codes(s) for s in scenes]) if sampler is not None else None
        self.n_objects = np.array([len(s["objects"]) for s in scenes]) if sampler is not None else None

    @property
    def augmented(self) -> bool:
        return self.sampler is not None

    def batch(self, idx: np.ndarray, rng: np.random.Generator):
        import torch

        if self.sampler is None:
            texts = [self.captions[i] for i in idx]
            same = np.array(texts, dtype=object)
            return texts, torch.from_numpy((same[:, None] == same[None, :]).astype(np.float32))
        texts, cons, complete = [], [], []
        for i in idx:
            t, c, full = self.sampler.sample(self.scenes[i], rng)
            texts.append(t)
            cons.append(c)
            complete.append(full)
        m = match_matrix(self.codes[idx], self.n_objects[idx], np.stack(cons), np.array(complete))
        np.fill_diagonal(m, True)
        return texts, torch.from_numpy(m.astype(np.float32))


def batch_texts_for(captions: Sequence[str], scenes: Sequence[dict] | None, augment: str,
                    caption_probs: dict | None = None) -> BatchTexts:
    """The BatchTexts of a dataset for `--augment` auto / shapes / none."""
    use_scenes = scenes is not None and augment in ("auto", "shapes") and all(s is not None for s in scenes)
    if augment == "shapes" and not use_scenes:
        raise ConfigError("--augment shapes needs scenes.jsonl beside captions.csv")
    if not use_scenes:
        return BatchTexts(captions)
    return BatchTexts(captions, scenes, ShapesCaptionSampler(**(caption_probs or {})))
