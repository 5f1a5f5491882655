"""The Library facade, the Python API: open a library directory, index folders, search them.

    lib = Library.open("~/my-library")
    lib.index(["~/Photos"])            # -> IndexReport
    lib.search("a dorsal hand", k=5)   # -> [Result(rank, score, path, ...)]
    lib.search(image="hand.jpg")
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import identity, imaging
from .encoders import DEFAULT_MODEL, parse_model_spec
from .errors import (ClipSearchError, ConfigError, EmptyLibraryError, ImageError, IntegrityError, LibraryError,
                     LibraryLockedError, LibraryNotFoundError, ModelMismatchError)
from .indexer import Indexer, IndexReport, ProgressCallback, Skipped
from .search import Result, rank
from .store import DB_NAME, Catalog, dumps
from .vector_index import INDEX_NAME, CacheHeader, VectorIndex, remove_orphans

logger = logging.getLogger(__name__)

LOCK_NAME = "lock"
PUBLISH_EVERY_SECONDS = 30.0


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


MAX_QUERY_CHARS = 4096  # the model reads at most 77 tokens; a longer text is a mistake, not a query


def check_query_text(text: str) -> None:
    """Refuse what cannot be a query before any model is loaded: empty, NUL, megabytes."""
    if not text.strip():
        raise ConfigError("query is empty: give some words to search for")
    if "\x00" in text:
        raise ConfigError("the query contains a NUL character")
    if len(text) > MAX_QUERY_CHARS:
        raise ConfigError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS} "
                          f"(the model reads only its first tokens)")


def _warn_if_truncated(encoder, text: str) -> None:
    """open_clip's tokenizer cuts long texts silently: say so."""
    tokenizer, context = getattr(encoder, "tokenizer", None), getattr(encoder, "context_length", None)
    if tokenizer is None or context is None or not hasattr(tokenizer, "encode"):
        return
    n = len(tokenizer.encode(text)) + 2  # start and end tokens
    if n > context:
        logger.warning("query truncated to the first %d tokens (it has %d); only they are searched", context, n)


@contextlib.contextmanager
def storage_errors(what: str):
    """Turn a failing disk or database (disk full, I/O error, a damaged file) into one clear LibraryError."""
    import sqlite3

    import sqlalchemy as sa

    try:
        yield
    except ClipSearchError:
        raise
    except OSError as e:
        reason = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error",
                  errno.EROFS: "read-only file system"}.get(e.errno, e.strerror or str(e))
        where = f" ({e.filename})" if e.filename else ""
        raise LibraryError(f"{reason}{where} while {what}; every committed batch is kept. Fix the cause "
                           f"(e.g. free some space), then run the command again") from e
    except (sa.exc.DBAPIError, sqlite3.Error) as e:
        orig = getattr(e, "orig", None) or e
        msg = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
        hint = "disk full: " if "full" in msg else ""
        if "malformed" in msg or "not a database" in msg:
            raise LibraryError(f"the library database is damaged ({msg}) while {what}; it was left as it is: "
                               f"run `clipsearch check`, and restore library.db from a backup") from e
        raise LibraryError(f"{hint}the library database failed ({msg}) while {what}; the batch in progress "
                           f"was rolled back and every committed batch is kept. Fix the cause, then run the "
                           f"command again") from e


class Library:
    """A directory holding library.db (the truth), index.faiss (a cache) and a writer lock."""

    def __init__(self, path: Path, catalog: Catalog, *, model: str, encoder=None, device: str = "auto",
                 precision: str = "auto", batch_size: int = 32, workers: int | None = None,
                 max_pixels: int = imaging.DEFAULT_MAX_PIXELS, follow_symlinks: bool = False,
                 allow_truncated: bool = False):
        self.path = path
        self.follow_symlinks = follow_symlinks
        self.allow_truncated = allow_truncated
        self.catalog = catalog
        self.model_name = model
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.workers = workers
        self.max_pixels = max_pixels
        self._encoder = encoder
        self._text_encoder = None  # the light text tower (encoders/textfast.py), False when it does not apply
        self._index: VectorIndex | None = None
        self._lock_fd: int | None = None

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, model: str | None = None, create: bool = True, encoder=None,
             **options) -> "Library":
        """Open the library at `path`, creating it (with `model`, default DEFAULT_MODEL) if missing.

        `model` must be the library's own model when the library has vectors already; a different
        one raises ModelMismatchError naming both.
        """
        path = Path(os.path.expanduser(os.fspath(path))).absolute()
        db = path / DB_NAME
        if not db.exists():
            if not create:
                raise LibraryNotFoundError(f"no library at {path}; run `clipsearch index DIR` to create one")
            if path.exists() and not path.is_dir():
                raise LibraryError(f"{path} exists and is not a directory")
            path.mkdir(parents=True, exist_ok=True)
        with storage_errors(f"opening the library at {path}"):
            catalog = Catalog.open(db)
        try:
            stored = catalog.get_meta("model")
            wanted = parse_model_spec(model).name if model else None
            if encoder is not None and wanted is None:
                wanted = encoder.name
            if stored is None or (wanted and wanted != stored and catalog.get_meta("model_fingerprint") is None):
                stored = wanted or parse_model_spec(DEFAULT_MODEL).name
                catalog.set_meta(model=stored)
            elif wanted and wanted != stored:
                raise ModelMismatchError(
                    f"the library at {path} was built with model {stored}; it cannot be used with {wanted}. "
                    f"Leave out --model to use {stored}, or give another --library for {wanted}"
                )
        except BaseException as e:
            catalog.close()
            with storage_errors(f"opening the library at {path}"):
                raise e
            raise
        return cls(path, catalog, model=stored, encoder=encoder, **options)

    def close(self) -> None:
        self._release_lock()
        self.catalog.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the model ------------------------------------------------------------------------------
    @property
    def encoder(self):
        """The library's model, loaded on first use and checked against the recorded fingerprint."""
        if self._encoder is None:
            from .encoders import load_encoder

            self._encoder = load_encoder(self.model_name, device=self.device, precision=self.precision)
        self._check_fingerprint(self._encoder)
        return self._encoder

    def text_encoder(self):
        """What embeds text queries: the model's text tower in numpy float32 (no torch import, ~0.4 s to load,
        the same function as the full model in fp32) when it covers the model and neither bf16/fp16 nor CUDA
        was asked for; the full model otherwise. Either way the library's recorded model is checked."""
        if self._text_encoder is None:
            self._text_encoder = False
            if self._encoder is None and self.device != "cuda" and self.precision in ("auto", "fp32"):
                self._text_encoder = identity.load_light_text_encoder(self.catalog, self.path, self.model_name) or False
        return self._text_encoder or self.encoder

    def _check_fingerprint(self, encoder) -> None:
        if getattr(self, "_fp_checked", None) is encoder:
            return
        identity.check_fingerprint(self.catalog, self.path, encoder)
        self._fp_checked = encoder

    @property
    def dim(self) -> int | None:
        d = self.catalog.get_meta("dim")
        return int(d) if d else None

    # -- the writer lock -----------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LibraryLockedError(f"the library at {self.path} is being indexed by {holder}; try again when it finishes") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _try_lock(self) -> bool:
        try:
            self._acquire_lock()
            return True
        except LibraryLockedError:
            return False

    # -- the vector cache ------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.path / INDEX_NAME

    def _header(self) -> CacheHeader:
        meta = self.catalog.all_meta()
        return CacheHeader(library_uuid=meta["library_uuid"], model_fingerprint=meta.get("model_fingerprint", ""),
                           dim=int(meta["dim"]), watermark_seq=0, ntotal=0)

    def vector_index(self) -> VectorIndex:
        """The cache, loaded or rebuilt, and caught up with every commit so far."""
        dim = self.dim
        if dim is None:
            raise EmptyLibraryError(f"the library at {self.path} has no images yet; run `clipsearch index DIR`")
        if self._index is None:
            self._index = self._load_cache(dim)
        self._catch_up(self._index)
        return self._index

    def _load_cache(self, dim: int) -> VectorIndex:
        expected = self._header()
        if self.index_path.exists():
            try:
                index, header = VectorIndex.load(self.index_path)
                problem = None
                if header.library_uuid != expected.library_uuid:
                    problem = "it belongs to another library"
                elif header.model_fingerprint != expected.model_fingerprint or header.dim != dim:
                    problem = "it was built by another model"
                elif header.watermark_seq > self.catalog.seq:
                    problem = "it is ahead of the database (the database lost commits)"
                if problem is None:
                    return index
                logger.warning("rebuilding the search cache %s: %s", self.index_path, problem)
            except (IntegrityError, OSError, RuntimeError) as e:
                logger.warning("rebuilding the search cache %s: %s", self.index_path, e)
                try:
                    os.replace(self.index_path, self.index_path.with_suffix(".faiss.corrupt"))
                except OSError:
                    pass
        return self._rebuild(dim)

    def _rebuild(self, dim: int) -> VectorIndex:
        seq = self.catalog.seq
        ids, vecs = self.catalog.live_vectors(dim)
        index = VectorIndex(dim, watermark=seq)
        index.add(ids, vecs)
        # commits after `seq` are caught up next
        return index

    def _catch_up(self, index: VectorIndex) -> bool:
        seq = self.catalog.seq
        if seq == index.watermark:
            return False
        dead, ids, vecs = self.catalog.changes_since(index.watermark, index.dim)
        index.remove(dead)
        index.add(ids, vecs)
        index.watermark = seq
        return True

    def _publish(self, index: VectorIndex) -> None:
        """Write the cache file; the database is made durable first so the cache is never ahead of it."""
        self.catalog.make_durable()
        index.save(self.index_path, self._header())

    # -- indexing -------------------------------------------------------------------------------
    def index(self, paths: Iterable[str | os.PathLike] | None = None, *,
              on_progress: ProgressCallback | None = None) -> IndexReport:
        """Index folders (all known roots when `paths` is None). Returns what changed."""
        if paths is None:
            roots = [Path(os.fsdecode(r["path"])) for r in self.catalog.roots()]
            if not roots:
                raise ConfigError("no folders to index: give at least one")
        else:
            roots = [Path(os.path.abspath(os.path.expanduser(os.fspath(p)))) for p in paths]
        offline = []
        if paths is None:  # a known folder that is gone (an unmounted disk): skip it, delete nothing there
            offline = [r for r in roots if not r.is_dir()]
            roots = [r for r in roots if r.is_dir()]
        for r in roots or offline:
            if not r.is_dir():
                raise LibraryError(f"{r} is not a readable directory (root unavailable); nothing under it was changed")
        with storage_errors(f"indexing into the library at {self.path}"):
            report = self._index_roots(roots, on_progress)
        report.incomplete.extend(Skipped(str(r), "root unavailable; nothing under it was changed") for r in offline)
        return report

    def _index_roots(self, roots: list[Path], on_progress) -> IndexReport:
        self._acquire_lock()
        try:
            remove_orphans(self.path)
            # the model is loaded only when a file's content is new (Indexer); a library with vectors knows its
            # dimension, and a new one gets its cache once the model (which records the dimension) is loaded
            dim = self.dim
            index = self._load_cache(dim) if dim is not None else None
            if index is not None:
                self._catch_up(index)
            last_publish = time.monotonic()

            def on_commit(seq: int) -> None:
                nonlocal last_publish, index
                if index is None:
                    if not indexer.encoder_loaded:
                        return  # no model yet, so no vectors yet: nothing for a cache
                    index = VectorIndex(indexer.encoder().dim)
                self._catch_up(index)
                if time.monotonic() - last_publish > PUBLISH_EVERY_SECONDS:
                    self._publish(index)
                    last_publish = time.monotonic()

            indexer = Indexer(self.catalog, lambda: self.encoder, batch_size=self.batch_size, workers=self.workers,
                              max_pixels=self.max_pixels, on_progress=on_progress, on_commit=on_commit,
                              follow_symlinks=self.follow_symlinks, allow_truncated=self.allow_truncated)
            failed = True
            try:
                report = indexer.run(roots)
                failed = False
            finally:
                try:
                    self.catalog.set_meta(last_index_at=repr(time.time()))
                    if index is None and indexer.encoder_loaded:
                        index = VectorIndex(indexer.encoder().dim)
                    if index is not None:
                        self._catch_up(index)
                        with storage_errors(f"writing the search cache {self.index_path} (the database has every "
                                            f"committed batch; the previous cache file is intact)"):
                            self._publish(index)
                        self._index = index
                except Exception as e:
                    if not failed:
                        raise
                    logger.warning("the search cache was not published: %s", e)  # the first error wins
            self.catalog.checkpoint()
            return report
        finally:
            self._release_lock()

    # -- searching ------------------------------------------------------------------------------
    def search(self, text: str | None = None, *, image: str | os.PathLike | None = None, k: int = 10,
               min_score: float | None = None) -> list[Result]:
        """The k images closest to a text or to an example image, best first, with cosine scores.

        `min_score` leaves out results whose score is lower (so a search may find nothing: []).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a whole number of at least 1, not {k!r}")
        if (text is None) == (image is None):
            raise ConfigError("search takes a text or an image=, not both or neither")
        if text is not None:
            check_query_text(text)
        index = self.vector_index()
        if index.ntotal == 0:
            raise EmptyLibraryError(f"the library at {self.path} has no images; run `clipsearch index DIR`")
        exclude: frozenset[bytes] = frozenset()
        if text is not None:
            encoder = self.text_encoder()
            _warn_if_truncated(encoder, text)
            q = encoder.embed_texts([text])[0]
        else:
            q = self.embed_image_file(image)
        if not np.all(np.isfinite(q)):
            raise IntegrityError("the model produced a non-finite query vector")
        return rank(index, self.catalog, q, k, exclude_paths=exclude, min_score=min_score)

    def embed_image_file(self, image: str | os.PathLike) -> np.ndarray:
        p = Path(os.path.expanduser(os.fspath(image)))
        try:
            st = os.stat(p)
        except OSError as e:
            raise ImageError(f"cannot read query image {p}: {e.strerror}") from None
        import stat as _stat

        if not _stat.S_ISREG(st.st_mode):
            raise ImageError(f"query image {p} is not a regular file")
        entry = imaging.Entry(os.fsencode(p), st.st_size, st.st_mtime_ns, st.st_ino, follow=True)  # named by the user
        try:
            data = imaging.read_file(entry)
            img, _ = imaging.decode(data, max_pixels=self.max_pixels, draft=getattr(self.encoder, "image_size", 224))
        except ImageError as e:
            raise ImageError(f"cannot use query image {p}: {e.reason}") from None
        return self.encoder.embed_batch([self.encoder.preprocess(img)])[0]

    # -- check ----------------------------------------------------------------------------------
    def check(self, *, repair: bool = False) -> "CheckReport":
        """Verify the library: database integrity, one finite unit vector of the library's dimension
        per live file, and a cache that agrees with the database after catch-up.

        Read-only unless `repair`: then a cache that disagrees (or is damaged) is rebuilt from the
        database and published. The database itself is never rewritten.
        """
        report = CheckReport(library=str(self.path))
        db_ok = self._check_database(report)
        dim = self.dim
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
        expected = self._header()
        problems: list[str] = []
        if not self.index_path.exists():
            report.cache = "missing"
            report.notes.append(f"no cache file {INDEX_NAME}: it is rebuilt from the database when needed")
            index = self._rebuild(dim)
        else:
            try:
                index, header = VectorIndex.load(self.index_path)
            except (IntegrityError, OSError, RuntimeError) as e:
                report.cache = "damaged"
                report.cache_problems.append(f"cache: {e}")
                report.problems.extend(report.cache_problems)
                return
            report.watermark = header.watermark_seq
            if header.library_uuid != expected.library_uuid:
                problems.append("cache: it belongs to another library")
            if header.model_fingerprint != expected.model_fingerprint or header.dim != dim:
                problems.append("cache: it was built by another model")
            if header.watermark_seq > report.seq:
                problems.append(f"cache: its watermark {header.watermark_seq} is ahead of the database's seq "
                                f"{report.seq} (the database lost commits)")
            if problems:
                report.cache = "mismatched"
                report.cache_problems.extend(problems)
                report.problems.extend(problems)
                return
            report.cache = "ok"
            self._catch_up(index)
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
        self._acquire_lock()
        try:
            if self.index_path.exists() and report.cache in ("damaged", "mismatched"):
                os.replace(self.index_path, self.index_path.with_suffix(".faiss.corrupt"))
            index = self._rebuild(dim)
            self._catch_up(index)
            self._publish(index)
            self._index = index
        finally:
            self._release_lock()
        report.repaired = True
        report.notes.append(f"rebuilt the cache from the database ({index.ntotal} vectors, seq {index.watermark})")
        fixed = report.cache_problems
        report.problems = [p for p in report.problems if p not in fixed]
        report.cache_problems = []
        report.cache = "ok"
        report.cache_ntotal = index.ntotal
        report.watermark = index.watermark

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict:
        meta = self.catalog.all_meta()
        counts = self.catalog.counts()
        last = meta.get("last_index_at")
        return {
            "library": str(self.path),
            "model": meta.get("model"),
            "model_fingerprint": meta.get("model_fingerprint"),
            "dim": int(meta["dim"]) if meta.get("dim") else None,
            "images": counts["ok"],
            "vectors": counts["vectors"],
            "failed": counts["failed"],
            "deleted": counts["deleted"],
            "roots": [os.fsdecode(r["path"]) for r in self.catalog.roots()],
            "last_index": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(float(last))) if last else None,
            "seq": int(meta.get("seq", 0)),
        }
