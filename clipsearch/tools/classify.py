"""Zero-shot labels with the library's own model, and tags stored in the catalog.

    classify(reader, ["dog.jpg"], ["a dog", "a cat", "a car"], k=2)   # [Classification(path, id, labels)]
    classify_library(reader, labels)                                # every indexed image, stored vectors only
    tag_library(lib, labels, k=1)                                   # top labels into the catalog's tags

Each label is embedded through several prompt templates (prompt ensembling: the templates' unit
vectors averaged, then normalised again); an image's probabilities are the softmax over labels of
logit_scale * cosine, with the model's own logit scale read from its checkpoint (the temperature
it was trained with). An image that is indexed uses its stored vector: no image tower runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import ConfigError, NotFoundError

# OpenAI's CLIP paper and open_clip's zero-shot evaluation ensemble many templates; a few general ones here
DEFAULT_TEMPLATES = ("{}", "a photo of {}.", "a picture of {}.", "an image of {}.", "a close-up photo of {}.")
# the demo model knows only its domain's words: its ensemble places the object in each of the 9 positions
SHAPES_TEMPLATES = ("{}",) + tuple("{} " + p for p in (
    "in the top left", "at the top", "in the top right", "on the left", "in the center", "on the right",
    "in the bottom left", "at the bottom", "in the bottom right"))
MODEL_TEMPLATES = {"shapes": SHAPES_TEMPLATES}
FALLBACK_LOGIT_SCALE = 100.0  # CLIP's clamp, when a checkpoint's own value cannot be read
MAX_LABELS = 1000


@dataclass
class Classification:
    path: str
    id: int | None  # the embedding id when the image is indexed (its stored vector was used)
    labels: list[tuple[str, float]]  # top k, most probable first

    def to_dict(self) -> dict:
        return {"path": self.path, "id": self.id,
                "labels": [{"label": lab, "probability": round(p, 6)} for lab, p in self.labels]}


def parse_labels(text: str | None = None, file: str | os.PathLike | None = None) -> list[str]:
    """Labels from a comma-separated string and/or a file (one a line, or comma-separated); duplicates dropped."""
    raw: list[str] = []
    if text:
        raw.extend(text.split(","))
    if file is not None:
        try:
            content = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read labels file {file}: {e}") from None
        for line in content.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                raw.extend(line.split(","))
    labels = list(dict.fromkeys(x.strip() for x in raw if x.strip()))
    if len(labels) < 2:
        raise ConfigError("give at least two labels (--labels \"a dog,a cat\" or --labels-file FILE)")
    if len(labels) > MAX_LABELS:
        raise ConfigError(f"at most {MAX_LABELS} labels, not {len(labels)}")
    return labels


def templates_for(model: str | None) -> tuple[str, ...]:
    return MODEL_TEMPLATES.get(model or "", DEFAULT_TEMPLATES)


def logit_scale(model: str | None, recorded: Path | None = None) -> float:
    """exp(logit_scale) from the model's safetensors checkpoint (cutoff.model_logit_scale, which also reads a
    pretrained model's weights where the library recorded them); FALLBACK_LOGIT_SCALE when it cannot be read."""
    from ..cutoff import model_logit_scale

    return model_logit_scale(model, recorded) or FALLBACK_LOGIT_SCALE


def label_matrix(embed_texts: Callable[[list[str]], np.ndarray], labels: Sequence[str],
                 templates: Sequence[str]) -> np.ndarray:
    """One unit vector per label: the normalised mean of its templated prompts' unit vectors."""
    prompts = [t.format(lab) for lab in labels for t in templates]
    v = np.asarray(embed_texts(prompts), dtype=np.float64).reshape(len(labels), len(templates), -1)
    v /= np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-12)
    m = v.mean(axis=1)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return m.astype(np.float32)


def probabilities(vectors: np.ndarray, labels: np.ndarray, scale: float) -> np.ndarray:
    """softmax over labels of scale * cosine, one row per image."""
    logits = scale * (np.asarray(vectors, np.float64) @ np.asarray(labels, np.float64).T)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    k = max(1, min(k, len(labels)))
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([(labels[i], float(row[i])) for i in order])
    return out


class Classifier:
    """The labels' vectors and the model's temperature for one reader, computed once."""

    def __init__(self, reader, labels: Sequence[str], *, templates: Sequence[str] | None = None):
        self.reader = reader
        self.labels = list(labels)
        model = reader.catalog.get_meta("model")
        self.templates = tuple(templates) if templates else templates_for(model)
        for t in self.templates:
            if "{}" not in t:
                raise ConfigError(f"a template must contain {{}} (where the label goes), not {t!r}")
        from ..identity import recorded_weights

        self.scale = logit_scale(model, recorded_weights(reader.catalog))
        self.matrix = label_matrix(reader.embed_texts, self.labels, self.templates)

    def classify_vectors(self, vectors: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        return top_k(probabilities(vectors, self.matrix, self.scale), self.labels, k)


def _vector_of(reader, path: str) -> tuple[np.ndarray, int | None]:
    try:
        vec, _ = reader.stored_vector(path)  # an indexed file: its stored vector, no model
        return vec, reader.catalog.file_embedding_id(os.fsencode(os.path.abspath(os.path.expanduser(path))))
    except NotFoundError:
        vec, _ = reader.embed_image_file(path)  # known content or the image tower
        return vec, None


def classify(reader, images: Iterable[str | os.PathLike], labels: Sequence[str], *, k: int = 3,
             templates: Sequence[str] | None = None, classifier: Classifier | None = None) -> list[Classification]:
    """Top-k labels of image files (indexed ones by their stored vectors)."""
    clf = classifier or Classifier(reader, labels, templates=templates)
    out = []
    for image in images:
        path = os.fspath(image)
        vec, eid = _vector_of(reader, path)
        out.append(Classification(os.path.abspath(os.path.expanduser(path)), eid, clf.classify_vectors(vec[None], k)[0]))
    return out


def classify_library(reader, labels: Sequence[str], *, k: int = 3, templates: Sequence[str] | None = None,
                     on_progress: Callable[[int, int], None] | None = None, batch: int = 4096):
    """(embedding id, its live paths, top-k labels) for every indexed image, from the stored vectors."""
    clf = Classifier(reader, labels, templates=templates)
    index = reader.vector_index()
    ids, vecs = index.ids(), index.vectors()
    out = []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        tops = clf.classify_vectors(vecs[start:start + batch], k)
        files = reader.catalog.files_for_embeddings(chunk.tolist())
        for eid, top in zip(chunk.tolist(), tops):
            if eid in files:
                out.append((int(eid), [os.fsdecode(p) for p in files[eid]], top))
        if on_progress is not None:
            on_progress(min(start + batch, len(ids)), len(ids))
    return out


def tag_library(lib, labels: Sequence[str], *, k: int = 1, min_probability: float = 0.0,
                templates: Sequence[str] | None = None, on_progress=None) -> dict[str, int]:
    """Store each indexed image's top-k labels (at least `min_probability`) as its tags, replacing the tags
    it had (a Library: takes the writer lock). Returns how many images got each tag."""
    rows = classify_library(lib.reader, labels, k=k, templates=templates, on_progress=on_progress)
    tags = {eid: [(lab, p) for lab, p in top if p >= min_probability] for eid, _, top in rows}
    lib.lock.acquire()
    try:
        lib.catalog.set_tags(tags)
    finally:
        lib.lock.release()
    counts: dict[str, int] = {}
    for labels_of in tags.values():
        for lab, _ in labels_of:
            counts[lab] = counts.get(lab, 0) + 1
    return counts
