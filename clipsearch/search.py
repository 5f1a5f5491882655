"""Executing a Query: terms -> one unit query vector -> the cache's best ids -> live files -> Results.

Nothing here loads a model or opens a file by itself: the caller (reader.py) passes a `Sources` object
that embeds texts and image files and finds stored vectors, so the same pipeline serves the CLI, the
Python API and the web page.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .errors import ConfigError, IntegrityError
from .query import Query, apply_template
from .store import Catalog
from .vector_index import VectorIndex


@dataclass(frozen=True)
class Result:
    rank: int
    score: float  # cosine similarity between the query and the image
    path: str  # absolute; names that are not UTF-8 keep their bytes through os.fsdecode
    embedding_id: int

    def to_dict(self) -> dict:
        return {"rank": self.rank, "score": self.score, "path": self.path, "id": self.embedding_id}


class Sources(Protocol):
    """Where a query's term vectors come from (reader.py implements it)."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_image_file(self, path: str) -> tuple[np.ndarray, bytes | None]:
        """The image's unit vector, and its path as stored when it is itself an indexed file (else None)."""

    def stored_vector(self, id_or_path: int | str) -> tuple[np.ndarray, list[bytes]]:
        """An indexed image's stored vector and the live paths that share it."""


@dataclass
class Plan:
    """A query's vector and the indexed files its example images are (left out of results unless asked)."""

    vector: np.ndarray
    examples: frozenset[bytes]


def plan(query: Query, sources: Sources) -> Plan:
    query.validate()
    texts = [t for t in query.terms if t.kind == "text"]
    vectors: list[np.ndarray] = []
    weights: list[float] = []
    examples: set[bytes] = set()
    if texts:
        vectors.extend(text_vectors([t.value for t in texts], query.templates, sources))
        weights.extend(t.weight for t in texts)
    for t in query.terms:
        if t.kind == "image":
            v, stored = sources.embed_image_file(t.value)
            if stored is not None and t.weight > 0:
                examples.add(stored)
        elif t.kind == "like":
            v, paths = sources.stored_vector(t.value)
            if t.weight > 0:
                examples.update(paths)
        else:
            continue
        vectors.append(v)
        weights.append(t.weight)
    return Plan(combine(vectors, weights), frozenset(examples))


def text_vectors(texts: Sequence[str], templates: Sequence[str], sources: Sources) -> np.ndarray:
    """One unit vector per text: the text's own, or the mean of its templated prompts' unit vectors
    (renormalised), all prompts embedded in one batch."""
    if not templates:
        return _unit(sources.embed_texts(list(texts)))
    prompts = [apply_template(t, text) for text in texts for t in templates]
    v = _unit(sources.embed_texts(prompts)).reshape(len(texts), len(templates), -1).mean(axis=1)
    return _unit(v)


def _unit(m) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        raise IntegrityError("the model produced a non-finite query vector")
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The normalised weighted sum of unit vectors (a negative weight subtracts its term)."""
    m = _unit(np.asarray(vectors, dtype=np.float64))
    q = (np.asarray(weights, dtype=np.float64)[:, None] * m).sum(axis=0)
    norm = float(np.linalg.norm(q))
    if norm < 1e-6:
        raise ConfigError("the query's terms cancel each other out: nothing is left to search for")
    return (q / norm).astype(np.float32)


def execute(query: Query, index: VectorIndex, catalog: Catalog, sources: Sources) -> list[Result]:
    p = plan(query, sources)
    exclude = frozenset() if query.include_self else p.examples
    return rank(index, catalog, p.vector, query.k, exclude_paths=exclude, min_score=query.min_score)


def rank(index: VectorIndex, catalog: Catalog, query: np.ndarray, k: int, *,
         exclude_paths: frozenset[bytes] = frozenset(), min_score: float | None = None) -> list[Result]:
    """The k best live files for a unit query vector, best first; copies of one image share its score.

    The catalog is the authority: ids whose files were deleted since the cache was caught up are
    dropped, and the search widens until k files are found or the index is exhausted.
    """
    want = k + len(exclude_paths)
    fetch = min(index.ntotal, max(2 * want, want + 16))
    while True:
        scores, ids = index.search(query, fetch)
        files = catalog.files_for_embeddings(ids.tolist())
        out: list[Result] = []
        for score, eid in zip(scores.tolist(), ids.tolist()):
            if min_score is not None and score < min_score:
                return out
            for path in files.get(eid, ()):
                if path in exclude_paths:
                    continue
                out.append(Result(len(out) + 1, float(score), os.fsdecode(path), int(eid)))
                if len(out) == k:
                    return out
        if fetch >= index.ntotal:
            return out
        fetch = min(index.ntotal, fetch * 4)
