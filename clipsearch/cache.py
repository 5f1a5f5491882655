"""The search cache of one library: index.faiss loaded, rebuilt, caught up with the catalog, published.

The catalog is the truth; the cache is never ahead of it. A cache file that is damaged, belongs to
another library or model, or claims commits the database does not have is set aside and rebuilt.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import IntegrityError
from .store import Catalog
from .vector_index import INDEX_NAME, CacheHeader, VectorIndex

logger = logging.getLogger(__name__)


class SearchCache:
    def __init__(self, directory: Path, catalog: Catalog):
        self.path = Path(directory) / INDEX_NAME
        self.catalog = catalog

    def header(self) -> CacheHeader:
        meta = self.catalog.all_meta()
        return CacheHeader(library_uuid=meta["library_uuid"], model_fingerprint=meta.get("model_fingerprint", ""),
                           dim=int(meta["dim"]), watermark_seq=0, ntotal=0)

    def problem(self, header: CacheHeader, expected: CacheHeader, seq: int) -> str | None:
        """Why a cache file with this header cannot serve the library now (None when it can)."""
        if header.library_uuid != expected.library_uuid:
            return "it belongs to another library"
        if header.model_fingerprint != expected.model_fingerprint or header.dim != expected.dim:
            return "it was built by another model"
        if header.watermark_seq > seq:
            return "it is ahead of the database (the database lost commits)"
        return None

    def load(self, dim: int) -> VectorIndex:
        """The cache file when it is sound and belongs here, else a rebuild from the catalog (not caught up)."""
        if self.path.exists():
            try:
                index, header = VectorIndex.load(self.path)
                problem = self.problem(header, self.header(), self.catalog.seq)
                if problem is None:
                    return index
                logger.warning("rebuilding the search cache %s: %s", self.path, problem)
            except (IntegrityError, OSError, RuntimeError) as e:
                logger.warning("rebuilding the search cache %s: %s", self.path, e)
                self.set_aside()
        return self.rebuild(dim)

    def rebuild(self, dim: int) -> VectorIndex:
        seq = self.catalog.seq
        ids, vecs = self.catalog.live_vectors(dim)
        index = VectorIndex(dim, watermark=seq)
        index.add(ids, vecs)
        return index  # commits after `seq` are caught up next

    def catch_up(self, index: VectorIndex) -> bool:
        """Apply every commit after the index's watermark. True when something changed."""
        seq = self.catalog.seq
        if seq == index.watermark:
            return False
        dead, ids, vecs = self.catalog.changes_since(index.watermark, index.dim)
        index.remove(dead)
        index.add(ids, vecs)
        index.watermark = seq
        return True

    def publish(self, index: VectorIndex) -> None:
        """Write the cache file; the database is made durable first so the cache is never ahead of it."""
        self.catalog.make_durable()
        index.save(self.path, self.header())

    def set_aside(self) -> None:
        try:
            os.replace(self.path, self.path.with_suffix(".faiss.corrupt"))
        except OSError:
            pass
