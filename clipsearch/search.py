"""Executing a Query: terms -> one unit query vector -> candidates (filters) -> the best ids -> live files -> Results.

Nothing here loads a model or opens a file by itself: the caller (reader.py) passes a `Sources` object
that embeds texts and image files and finds stored vectors, so the same pipeline serves the CLI, the
Python API and the web page.

Filters are applied before ranking: the catalog selects the candidates in SQL (store/filtering.py).
When they are few (at most 1/32 of the index, and at most SUBSET_MAX) only their vectors are
scored (VectorIndex.search_subset); when they are many, the whole index is scanned and the best ids are
checked against the filter in SQL, a widening window at a time. Then the cut-off (cutoff.py) and the
sort: `sort` reorders the results that passed the cut-off, never which ones they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .cutoff import Standing, min_gap
from .errors import ConfigError, IntegrityError
from .filters import check_filters, local_iso, wall_clock_iso
from .query import Filters, Query, apply_template
from .store import Catalog, FileInfo
from .vector_index import VectorIndex

# a filter leaving at most ntotal / SUBSET_FRACTION candidates (and at most SUBSET_MAX) scores only theirs; with more,
# reading their ids from SQL costs more than scanning every vector (benchmarks/filters.py)
SUBSET_FRACTION = 32
SUBSET_MAX = 50_000


@dataclass(frozen=True)
class Result:
    rank: int
    score: float  # cosine similarity between the query and the image
    path: str  # absolute; names that are not UTF-8 keep their bytes through os.fsdecode
    embedding_id: int
    # where the score stands among the query's scores over the library (cutoff.py)
    z: float | None = None
    percentile: float | None = None
    gap: float | None = None  # score - the query's floor
    min_gap: float | None = None  # the gap cutoff="auto" asked for (None: no cut-off was applied)
    # the file
    taken: str | None = None  # the photo's own date (EXIF), the camera's wall clock, ISO 8601 without a zone
    modified: str | None = None  # the file's modification time, ISO 8601 with this machine's offset
    date_source: str | None = None  # what sort="date" orders this result by: "taken", else "modified"
    format: str | None = None
    width: int | None = None
    height: int | None = None

    def to_dict(self) -> dict:
        return {"rank": self.rank, "score": self.score, "path": self.path, "id": self.embedding_id,
                "z": _round(self.z, 3), "percentile": _round(self.percentile, 2), "gap": _round(self.gap, 4),
                "min_gap": _round(self.min_gap, 4), "taken": self.taken, "modified": self.modified,
                "date_source": self.date_source, "format": self.format, "width": self.width, "height": self.height}


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


class Sources(Protocol):
    """Where a query's term vectors come from (reader.py implements it)."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_image_file(self, path: str) -> tuple[np.ndarray, bytes | None]:
        """The image's unit vector, and its path as stored when it is itself an indexed file (else None)."""

    def stored_vector(self, id_or_path: int | str) -> tuple[np.ndarray, list[bytes]]:
        """An indexed image's stored vector and the live paths that share it."""

    def logit_scale(self) -> float | None:
        """The library's model's logit scale (cutoff.model_logit_scale), for cutoff="auto"."""


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
    query.validate()
    filters = check_filters(query.filters) if query.filters.active else None  # before any model is loaded
    p = plan(query, sources)
    exclude = frozenset() if query.include_self else p.examples
    cutoff = effective_cutoff(query)
    logit_scale = sources.logit_scale() if cutoff == "auto" else None
    return rank(index, catalog, p.vector, query.k, exclude_paths=exclude, min_score=query.min_score,
                filters=filters, cutoff=cutoff, sort=query.sort, logit_scale=logit_scale)


def effective_cutoff(query: Query) -> str:
    """`auto` judges queries of one text term: that is what it was calibrated and measured on (benchmarks/cutoff.py).
    A query with an example image or an indexed image compares pictures with pictures, whose scores crowd
    together far higher (0.9 and up on the demo model), and a sum of several terms (negative ones above all)
    moves the score distribution by an amount nobody measured, so neither is cut; `min_score` still applies."""
    if query.cutoff == "auto" and (len(query.terms) != 1 or query.terms[0].kind != "text"):
        return "none"
    return query.cutoff


def rank(index: VectorIndex, catalog: Catalog, query: np.ndarray, k: int, *,
         exclude_paths: frozenset[bytes] = frozenset(), min_score: float | None = None,
         filters: Filters | None = None, cutoff: str = "none", sort: str = "score",
         logit_scale: float | None = None) -> list[Result]:
    """The k best live files for a unit query vector that pass `filters` (checked by filters.check_filters),
    best first, then cut (min_score, cutoff) and sorted; copies of one image share its score.

    The catalog is the authority: ids whose files were deleted since the cache was caught up are
    dropped, and the search widens until k files are found or the candidates are exhausted.
    """
    standing = Standing.of(index.sample_scores(query))
    floor, need = min_score, None
    if cutoff == "auto" and standing.judgeable:
        need = min_gap(logit_scale)
        floor = standing.floor + need if floor is None else max(floor, standing.floor + need)
    hits = _best(index, catalog, query, k, exclude_paths, floor, filters)
    if sort == "date":
        hits.sort(key=_date_key)
    elif sort == "path":
        hits.sort(key=lambda h: h[2].path)
    elif sort != "score":
        raise ConfigError(f"unknown sort {sort!r}")
    return [_result(i + 1, score, eid, info, standing, need) for i, (score, eid, info) in enumerate(hits)]


def _best(index: VectorIndex, catalog: Catalog, q: np.ndarray, k: int, exclude: frozenset[bytes],
          floor: float | None, filters: Filters | None) -> list[tuple[float, int, FileInfo]]:
    want = k + len(exclude)
    search, total = index.search, index.ntotal
    if filters is not None:
        limit = max(want, min(SUBSET_MAX, index.ntotal // SUBSET_FRACTION))
        candidates = catalog.candidate_embedding_ids(filters, limit)
        if candidates is not None:  # few: score only their vectors
            if not candidates:
                return []
            total = len(candidates)

            def search(qv, n):
                return index.search_subset(qv, n, candidates)
    fetch = min(total, max(2 * want, want + 16))
    infos: dict[int, list[FileInfo]] = {}
    while True:
        scores, ids = search(q, fetch)
        new = [int(i) for i in ids.tolist() if int(i) not in infos]
        if new:
            found = catalog.file_infos(new, filters)
            infos.update({i: found.get(i, []) for i in new})
        out: list[tuple[float, int, FileInfo]] = []
        for score, eid in zip(scores.tolist(), ids.tolist()):
            if floor is not None and score < floor:
                return out
            for info in infos[int(eid)]:
                if info.path in exclude:
                    continue
                out.append((float(score), int(eid), info))
                if len(out) == k:
                    return out
        if fetch >= total:
            return out
        fetch = min(total, fetch * 4)


def _result(rank: int, score: float, eid: int, info: FileInfo, standing: Standing, need: float | None) -> Result:
    return Result(rank, score, os.fsdecode(info.path), eid, z=standing.z(score), percentile=standing.percentile(score),
                  gap=standing.gap(score) if standing.n else None, min_gap=need,
                  taken=wall_clock_iso(info.taken_at), modified=local_iso(info.mtime_ns),
                  date_source="taken" if info.taken_at is not None else "modified" if info.mtime_ns is not None
                  else None, format=info.format, width=info.width, height=info.height)


def _date_key(hit: tuple[float, int, FileInfo]) -> tuple:
    """Newest first by the photo's own date, else the file's modification time; undated last; ties by score.
    (A taken date is the camera's wall clock read as UTC, so it may sit hours off a modification time.)"""
    score, _, info = hit
    when = info.taken_at if info.taken_at is not None else info.mtime_ns / 1e9 if info.mtime_ns is not None else None
    return (1, 0.0, -score) if when is None else (0, -when, -score)
