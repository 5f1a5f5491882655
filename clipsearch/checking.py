"""`clipsearch check`: verify a library (database integrity, one finite unit vector per live file, a cache
that agrees with the database) and, with --repair, rebuild the cache. The database is never rewritten."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import SearchCache
from .errors import IntegrityError
from .locking import WriterLock
from .store import Catalog
from .vector_index import INDEX_NAME, VectorIndex


@dataclass
class CheckReport:
    """What `Library.check` found. `ok` is True when there is nothing to fix."""

    library: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0  # live files (status ok)
    vectors: int = 0  # distinct live vectors
    dim: int | None = None
    seq: int = 0
    cache: str = "none"  # ok | missing | damaged | mismatched | none (no vectors yet)
    cache_ntotal: int | None = None
    watermark: int | None = None
    repaired: bool = False
    vector_problems: int = 0
    cache_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "library": self.library, "problems": list(self.problems), "notes": list(self.notes),
                "files": self.files, "vectors": self.vectors, "dim": self.dim, "seq": self.seq,
                "cache": self.cache, "cache_ntotal": self.cache_ntotal, "watermark": self.watermark,
                "repaired": self.repaired}


class Checker:
    def __init__(self, directory: Path, catalog: Catalog, cache: SearchCache, lock: WriterLock):
        self.directory = directory
        self.catalog = catalog
        self.cache = cache
        self.lock = lock
        self.repaired_index: VectorIndex | None = None
        self._live_ids: set[int] = set()

    def run(self, *, repair: bool = False) -> "CheckReport":
        """Verify the library: database integrity, one finite unit vector of the library's dimension
        per live file, and a cache that agrees with the database after catch-up.

        Read-only unless `repair`: then a cache that disagrees (or is damaged) is rebuilt from the
        database and published. The database itself is never rewritten.
        """
        report = CheckReport(library=str(self.directory))
        db_ok = self._check_database(report)
        dim = self.catalog.get_meta("dim")
        dim = int(dim) if dim else None
        report.dim = dim
        report.seq = self.catalog.seq
        if db_ok and dim is not None:
            self._check_vectors(report, dim)
            if report.vector_problems:
                report.notes.append("the cache was not compared: the database's vectors have problems")
            else:
                try:
                    self._check_cache(report, dim)
                except IntegrityError as e:
                    report.problems.append(f"database: {e}")
        if repair:
            if not db_ok or report.vector_problems:
                report.notes.append("the database itself has problems: --repair only rebuilds the cache, "
                                    "restore library.db from a backup")
            elif report.cache_problems or report.cache == "missing":
                if dim is not None:
                    self._repair_cache(report, dim)
        return report

    def _check_database(self, report: "CheckReport") -> bool:
        try:
            rows = self.catalog.integrity_check()
        except Exception as e:  # a damaged file can fail before integrity_check can answer
            report.problems.append(f"database: cannot be read: {type(e).__name__}: {e}")
            return False
        if rows != ["ok"]:
            report.problems.extend(f"database: {r}" for r in rows[:20])
            return False
        meta = self.catalog.all_meta()
        for key in ("library_uuid", "seq"):
            if key not in meta:
                report.problems.append(f"database: meta.{key} is missing")
        return not report.problems

    def _check_vectors(self, report: "CheckReport", dim: int) -> None:
        bad: list[str] = []
        live_ids: set[int] = set()
        for path, emb_id, vector, live in self.catalog.live_file_vectors():
            report.files += 1
            name = os.fsdecode(path)
            if emb_id is None or vector is None:
                bad.append(f"{name}: no vector")
                continue
            live_ids.add(emb_id)
            if len(vector) != dim * 4:
                bad.append(f"{name}: vector {emb_id} has {len(vector) // 4} dimensions, the library's is {dim}")
                continue
            v = np.frombuffer(vector, dtype="<f4")
            if not np.all(np.isfinite(v)):
                bad.append(f"{name}: vector {emb_id} is not finite")
            elif abs(float(np.linalg.norm(v)) - 1.0) > 1e-3:
                bad.append(f"{name}: vector {emb_id} is not a unit vector (norm {np.linalg.norm(v):.4f})")
            if not live:
                bad.append(f"{name}: vector {emb_id} is not flagged live")
        flagged = set(self.catalog.live_embedding_ids())
        for emb_id in sorted(flagged - live_ids)[:20]:
            bad.append(f"vector {emb_id} is flagged live but no live file uses it")
        report.vectors = len(live_ids)
        report.vector_problems = len(bad)
        report.problems.extend(bad[:50])
        if len(bad) > 50:
            report.problems.append(f"... and {len(bad) - 50} more vector problems")
        self._live_ids = live_ids

    def _check_cache(self, report: "CheckReport", dim: int) -> None:
        expected = self.cache.header()
        problems: list[str] = []
        if not self.cache.path.exists():
            report.cache = "missing"
            report.notes.append(f"no cache file {INDEX_NAME}: it is rebuilt from the database when needed")
            index = self.cache.rebuild(dim)
        else:
            try:
                index, header = VectorIndex.load(self.cache.path)
            except (IntegrityError, OSError, RuntimeError) as e:
                report.cache = "damaged"
                report.cache_problems.append(f"cache: {e}")
                report.problems.extend(report.cache_problems)
                return
            report.watermark = header.watermark_seq
            problem = self.cache.problem(header, expected, report.seq)
            if problem is not None:
                problems.append(f"cache: {problem} (its watermark {header.watermark_seq}, the database's seq "
                                f"{report.seq})")
            if problems:
                report.cache = "mismatched"
                report.cache_problems.extend(problems)
                report.problems.extend(problems)
                return
            report.cache = "ok"
            self.cache.catch_up(index)
        ids = index.ids()
        cache_ids = set(ids.tolist())
        want = self._live_ids
        if len(cache_ids) != len(ids):
            problems.append("cache: it holds duplicate ids")
        if cache_ids != want:
            extra, missing = sorted(cache_ids - want), sorted(want - cache_ids)
            problems.append(f"cache: {len(missing)} live vectors missing (e.g. {missing[:5]}), "
                            f"{len(extra)} ids that are not live (e.g. {extra[:5]})")
        else:
            db_ids, db_vecs = self.catalog.live_vectors(dim)
            order = np.argsort(ids, kind="stable")
            cache_vecs = index.vectors()[order]
            if not np.array_equal(ids[order], db_ids) or not np.array_equal(cache_vecs, db_vecs):
                problems.append("cache: its vectors differ from the database's")
        report.cache_ntotal = index.ntotal
        if problems:
            report.cache = "mismatched"
            report.cache_problems.extend(problems)
            report.problems.extend(problems)

    def _repair_cache(self, report: "CheckReport", dim: int) -> None:
        self.lock.acquire()
        try:
            if self.cache.path.exists() and report.cache in ("damaged", "mismatched"):
                os.replace(self.cache.path, self.cache.path.with_suffix(".faiss.corrupt"))
            index = self.cache.rebuild(dim)
            self.cache.catch_up(index)
            self.cache.publish(index)
            self.repaired_index = index
        finally:
            self.lock.release()
        report.repaired = True
        report.notes.append(f"rebuilt the cache from the database ({index.ntotal} vectors, seq {index.watermark})")
        fixed = report.cache_problems
        report.problems = [p for p in report.problems if p not in fixed]
        report.cache_problems = []
        report.cache = "ok"
        report.cache_ntotal = index.ntotal
        report.watermark = index.watermark
