"""Where a result stands among all of its query's scores, and the cut-off that judges by it (`cutoff="auto"`).

A cosine score means little on its own: one query scores 0.30 against everything, another 0.15, and
the best match of a query for something the library does not hold is still somebody's best match.
So each result is judged against the same query's scores over the whole library (or a deterministic
sample of 16,384+ rows of it, vector_index.sample_scores):

  floor       the 5th percentile of those scores: what the query scores against pictures that have
              nothing of it. A low quantile, not the mean or the median, so that a library where most
              pictures match (a folder of cat photos, searched for "a cat") keeps a low floor.
  gap         score - floor, in cosine units
  z           (score - mean) / std, and percentile (share of the library scoring below): shown, not used
              (z measured worse: when a library holds matches, they widen the spread they are judged by)

`cutoff="auto"` keeps a result when gap * logit_scale >= GAP_LOGITS: the gap in the model's own logit
units (CLIP models are trained so that a match stands a roughly fixed number of logits above the rest;
a model's logit_scale is read from its checkpoint, 100 when it cannot be, CLIP's usual trained value).
GAP_LOGITS was calibrated on the shapes demo model (benchmarks/cutoff.py prints the measurement); that
it carries over to other CLIP models through their logit scale is an assumption this project cannot
test offline. Libraries of fewer than MIN_JUDGE images are not judged (too few scores to say what is
usual): auto keeps everything there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FLOOR_QUANTILE = 0.05
GAP_LOGITS = 14.0  # benchmarks/cutoff.py; README "Filters, sorting and the cut-off" says why this value
DEFAULT_LOGIT_SCALE = 100.0
MIN_JUDGE = 20
SAFETENSORS_NAME = "open_clip_model.safetensors"


@dataclass(frozen=True)
class Standing:
    """One query's score distribution over the library."""

    n: int  # scores it was measured on
    mean: float
    std: float
    floor: float
    sorted_scores: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray) -> "Standing":
        s = np.sort(np.asarray(scores, dtype=np.float64))
        if len(s) == 0:
            return cls(0, 0.0, 0.0, 0.0, s)
        return cls(len(s), float(s.mean()), float(s.std()), float(np.quantile(s, FLOOR_QUANTILE)), s)

    @property
    def judgeable(self) -> bool:
        return self.n >= MIN_JUDGE

    def z(self, score: float) -> float | None:
        return (score - self.mean) / self.std if self.std > 0 else None

    def percentile(self, score: float) -> float | None:
        """Per cent of the library scoring below `score`."""
        if self.n == 0:
            return None
        return 100.0 * int(np.searchsorted(self.sorted_scores, score, side="left")) / self.n

    def gap(self, score: float) -> float:
        return score - self.floor


def min_gap(logit_scale: float | None) -> float:
    """The gap above the floor (cosine units) that cutoff="auto" asks of a result, for a model's logit scale."""
    scale = logit_scale if logit_scale and math.isfinite(logit_scale) and logit_scale > 0 else DEFAULT_LOGIT_SCALE
    return GAP_LOGITS / scale


def model_logit_scale(model_name: str | None, recorded: Path | None = None) -> float | None:
    """exp(logit_scale) of a model's checkpoint, read from its safetensors file without loading the model;
    None when the model's weights are not a safetensors file this can find. `recorded`: the weights file the
    library recorded (identity.recorded_weights), read first; how ARCH:TAG models are found."""
    if not model_name:
        return None
    try:
        from .encoders import parse_model_spec

        spec = parse_model_spec(model_name)
    except Exception:  # a name only an injected encoder knows: no checkpoint to read
        return None
    weights: Path | None = None
    if spec.kind in ("builtin", "dir") and spec.path is not None:
        weights = Path(spec.path) / SAFETENSORS_NAME
    elif spec.kind == "file" and spec.path is not None and Path(spec.path).suffix == ".safetensors":
        weights = Path(spec.path)
    if recorded is not None:
        weights = Path(recorded)
    if weights is None or not weights.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy") as f:
            if "logit_scale" not in f.keys():
                return None
            value = float(np.exp(np.asarray(f.get_tensor("logit_scale"), dtype=np.float64).reshape(-1)[0]))
    except (OSError, ValueError, KeyError, IndexError, RuntimeError):
        return None
    return value if math.isfinite(value) and value > 0 else None

