"""The Library facade, the Python API: open a library directory, index folders, search them.

    lib = Library.open("~/my-library")
    lib.index(["~/Photos"])            # -> IndexReport
    lib.search("a dorsal hand", k=5)   # -> [Result(rank, score, path, ...)]
    lib.search(image="hand.jpg")
    lib.search(Query.parse("a dog + on a beach - at night", k=5))

The parts live next door: locking.py (the writer lock), cache.py (the search cache), checking.py
(`check` and `--repair`), reader.py (the thread-safe read path that searching goes through), indexer.py.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from pathlib import Path
from typing import Iterable

from . import imaging
from .cache import SearchCache
from .checking import Checker, CheckReport
from .encoders import DEFAULT_MODEL, parse_model_spec
from .errors import ClipSearchError, ConfigError, LibraryError, LibraryNotFoundError
from .indexer import Indexer, IndexReport, ProgressCallback, Skipped
from .locking import WriterLock
from .query import Query
from .reader import Reader
from .search import Result
from .store import DB_NAME, Catalog
from .vector_index import VectorIndex, remove_orphans

logger = logging.getLogger(__name__)

PUBLISH_EVERY_SECONDS = 30.0

__all__ = ["CheckReport", "Library", "open_catalog", "storage_errors"]


@contextlib.contextmanager
def storage_errors(what: str):
    """Turn a failing disk or database (disk full, I/O error, a damaged file) into one clear LibraryError."""
    import sqlalchemy as sa

    from .store import DRIVER_ERRORS

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
    except (sa.exc.DBAPIError, *DRIVER_ERRORS) as e:
        orig = getattr(e, "orig", None) or e
        msg = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
        hint = "disk full: " if "full" in msg else ""
        if "malformed" in msg or "not a database" in msg:
            raise LibraryError(f"the library database is damaged ({msg}) while {what}; it was left as it is: "
                               f"run `clipsearch check`, and restore library.db from a backup") from e
        raise LibraryError(f"{hint}the library database failed ({msg}) while {what}; the batch in progress "
                           f"was rolled back and every committed batch is kept. Fix the cause, then run the "
                           f"command again") from e


def open_catalog(path: Path) -> Catalog:
    with storage_errors(f"opening the library at {path}"):
        return Catalog.open(path / DB_NAME)


class Library:
    """A directory holding library.db (the truth), index.faiss (a cache) and a writer lock."""

    def __init__(self, path: Path, catalog: Catalog, *, model: str, encoder=None, device: str = "auto",
                 precision: str = "auto", batch_size: int = 32, workers: int | None = None,
                 max_pixels: int = imaging.DEFAULT_MAX_PIXELS, follow_symlinks: bool = False,
                 allow_truncated: bool = False, text_engine: str = "numpy"):
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
        self.lock = WriterLock(path)
        self.cache = SearchCache(path, catalog)
        self.reader = Reader(path, catalog, model=model, encoder=encoder, device=device, precision=precision,
                             max_pixels=max_pixels, text_engine=text_engine)  # text_engine: see Reader.text_encoder

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, model: str | None = None, create: bool = True, encoder=None,
             **options) -> "Library":
        """Open the library at `path`, creating it (with `model`, default DEFAULT_MODEL) if missing.

        `model` must be the library's own model when the library has vectors already, or the same weights
        under another name (a moved checkpoint); other weights raise ModelMismatchError naming both.
        """
        path = Path(os.path.expanduser(os.fspath(path))).absolute()
        db = path / DB_NAME
        if not db.exists():
            if not create:
                raise LibraryNotFoundError(f"no library at {path}; run `clipsearch index DIR` to create one")
            if path.exists() and not path.is_dir():
                raise LibraryError(f"{path} exists and is not a directory")
            path.mkdir(parents=True, exist_ok=True)
        catalog = open_catalog(path)
        try:
            stored = catalog.get_meta("model")
            wanted = parse_model_spec(model).name if model else None
            if encoder is not None and wanted is None:
                wanted = encoder.name
            if stored is None or (wanted and wanted != stored and catalog.get_meta("model_fingerprint") is None):
                stored = wanted or parse_model_spec(DEFAULT_MODEL).name
                catalog.set_meta(model=stored)
            elif wanted and wanted != stored:
                # another name for the same weights (a moved checkpoint) is accepted, then checked in full
                from .identity import check_model_name

                check_model_name(catalog, path, stored, wanted)
                stored = wanted
        except BaseException as e:
            catalog.close()
            with storage_errors(f"opening the library at {path}"):
                raise e
            raise
        try:
            return cls(path, catalog, model=stored, encoder=encoder, **options)
        except BaseException:
            catalog.close()
            raise

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
        return self.reader.encoder

    def text_encoder(self):
        """What embeds text queries (see Reader.text_encoder)."""
        return self.reader.text_encoder()

    @property
    def dim(self) -> int | None:
        return self.reader.dim

    # -- the writer lock (names the CLI's interrupt holding knows: cli_interrupts.HOLD_FUNCTIONS) --
    def _acquire_lock(self) -> None:
        self.lock.acquire()

    def _release_lock(self) -> None:
        self.lock.release()

    @property
    def index_path(self) -> Path:
        return self.cache.path

    def vector_index(self) -> VectorIndex:
        """The cache, loaded or rebuilt, and caught up with every commit so far."""
        return self.reader.vector_index()

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
            index = self.cache.load(dim) if dim is not None else None
            if index is not None:
                self.cache.catch_up(index)
            last_publish = time.monotonic()

            def on_commit(seq: int) -> None:
                nonlocal last_publish, index
                if index is None:
                    if not indexer.encoder_loaded:
                        return  # no model yet, so no vectors yet: nothing for a cache
                    index = VectorIndex(indexer.encoder().dim)
                self.cache.catch_up(index)
                if time.monotonic() - last_publish > PUBLISH_EVERY_SECONDS:
                    self.cache.publish(index)
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
                        self.cache.catch_up(index)
                        with storage_errors(f"writing the search cache {self.index_path} (the database has every "
                                            f"committed batch; the previous cache file is intact)"):
                            self.cache.publish(index)
                        self.reader.adopt(index)
                except Exception as e:
                    if not failed:
                        raise
                    logger.warning("the search cache was not published: %s", e)  # the first error wins
            self.catalog.checkpoint()
            return report
        finally:
            self._release_lock()

    # -- searching ------------------------------------------------------------------------------
    def search(self, text: str | Query | None = None, *, image: str | os.PathLike | None = None, k: int = 10,
               min_score: float | None = None) -> list[Result]:
        """The k images closest to a text, an example image, or a Query, best first, with cosine scores.

        `min_score` leaves out results whose score is lower (so a search may find nothing: []). An `image=`
        that is itself an indexed file is among its own results (as before Query.include_self existed); a
        Query decides with its `include_self` (False by default: the example is left out).
        """
        return self.reader.search(text, image=image, k=k, min_score=min_score)

    # -- check ----------------------------------------------------------------------------------
    def check(self, *, repair: bool = False) -> CheckReport:
        """Verify the library: database integrity, one finite unit vector of the library's dimension
        per live file, and a cache that agrees with the database after catch-up.

        Read-only unless `repair`: then a cache that disagrees (or is damaged) is rebuilt from the
        database and published. The database itself is never rewritten.
        """
        checker = Checker(self.path, self.catalog, self.cache, self.lock)
        report = checker.run(repair=repair)
        if checker.repaired_index is not None:
            self.reader.adopt(checker.repaired_index)
        return report

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict:
        """Reader.status, plus the known roots that are offline (an unmounted disk: its files are kept)."""
        from .tools.manage import offline_roots

        offline = offline_roots(self.catalog)
        return {**self.reader.status(), "offline_roots": offline,
                "offline": sum(self.catalog.count_files_under(os.fsencode(r)) for r in offline)}
