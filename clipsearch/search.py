"""Ranked results: a query vector -> the cache's top ids -> live files through the catalog."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

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
