"""Folder -> changed files -> bytes, hash, decoded pixels (worker threads) -> vectors -> one commit per batch.

Nothing here prints; progress goes to an optional callback. Each batch is committed in one SQLite
transaction (the commit point), so an interrupted run keeps every batch before the last.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from . import _crashpoints, imaging
from .errors import ImageError, LibraryError
from .store import Catalog, Record

logger = logging.getLogger(__name__)

# ("found" | "done", count), and ("loading-model", 0) just before the model is loaded; always from the thread
# that called Indexer.run, and it may raise (the CLI raises a held Ctrl-C there)
ProgressCallback = Callable[[str, int], None]


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class IndexReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    reused: int = 0  # new or changed paths whose content was already embedded (renames, copies)
    embedded: int = 0  # images that went through the encoder
    batches: int = 0
    incomplete: list[Skipped] = field(default_factory=list)  # directories not read: nothing swept there
    warnings: list[Skipped] = field(default_factory=list)  # indexed, with a caveat (e.g. --allow-truncated)
    roots: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "added": self.added, "updated": self.updated, "unchanged": self.unchanged, "removed": self.removed,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "reused": self.reused, "embedded": self.embedded, "batches": self.batches,
            "incomplete": [{"path": s.path, "reason": s.reason} for s in self.incomplete],
            "warnings": [{"path": s.path, "reason": s.reason} for s in self.warnings],
            "roots": self.roots, "seconds": round(self.seconds, 3),
        }


@dataclass
class _Item:
    entry: imaging.Entry
    is_new: bool
    content_hash: str | None = None
    tensor: object = None  # preprocessed pixels when the content is new
    error: str | None = None
    size: tuple[int, int] | None = None
    row_id: int | None = None  # the file's catalog row, when it has one
    retry: bool = False  # changed or vanished during the run: store nothing now, look again next run
    vanished: bool = False
    warning: str | None = None
    meta: imaging.PhotoMeta | None = None  # format and EXIF date, from the header
    meta_only: bool = False  # unchanged, indexed before headers were recorded: read the header, nothing else
    data: bytes | None = None  # new content read before the model was loaded: decoded once it is


def _failed(item: _Item, e: Exception) -> _Item:
    """Record why this one file could not be read or decoded (one bad file never stops the run)."""
    if isinstance(e, imaging.FileChangedError):
        item.error, item.retry, item.vanished = e.reason, True, e.vanished
    elif isinstance(e, ImageError):
        item.error = e.reason
    else:
        logger.debug("unexpected failure on %r", item.entry.path, exc_info=True)
        item.error = f"{type(e).__name__}: {e}"
    return item


class Indexer:
    """`load_encoder` is a zero-argument callable returning the model. It is called at most once, in the main
    thread, the first time a file's content is new, so a run over unchanged files never loads it. Until then
    the decode threads read and hash files and hand new content back undecoded (the JPEG draft size and the
    preprocessing are the model's); the main thread loads the model (a Ctrl-C stops a slow download at once,
    and on_progress("loading-model", 0) is called before) and sends that content to be decoded."""

    def __init__(self, catalog: Catalog, load_encoder: Callable[[], object], *, batch_size: int = 32,
                 workers: int | None = None, max_pixels: int = imaging.DEFAULT_MAX_PIXELS,
                 on_progress: ProgressCallback | None = None, on_commit: Callable[[int], None] | None = None,
                 include_hidden: bool = False, follow_symlinks: bool = False, allow_truncated: bool = False):
        self.catalog = catalog
        self._load_encoder = load_encoder
        self._encoder = None
        self._encoder_error: BaseException | None = None
        self._encoder_lock = threading.Lock()
        self.batch_size = max(1, batch_size)
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.max_pixels = max_pixels
        self.on_progress = on_progress or (lambda kind, n: None)
        self.on_commit = on_commit or (lambda seq: None)
        self.include_hidden = include_hidden
        self.follow_symlinks = follow_symlinks
        self.allow_truncated = allow_truncated

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    def encoder(self):
        """The model, loaded on first use (once; a failed load is raised again, not retried)."""
        encoder = self._encoder
        if encoder is not None:
            return encoder
        with self._encoder_lock:
            if self._encoder is None:
                if self._encoder_error is not None:
                    raise self._encoder_error
                self.on_progress("loading-model", 0)
                try:
                    self._encoder = self._load_encoder()
                except BaseException as e:
                    self._encoder_error = e
                    raise
            return self._encoder

    def _prepare(self, item: _Item) -> _Item:
        """Worker: read the bytes once, hash them, and decode only when the content is new.

        A failure of the file is recorded in the item; a failing database is not the file's fault and is
        raised (to the main thread, by the future), stopping the run."""
        if item.meta_only:
            item.meta = imaging.read_photo_meta(item.entry)
            if item.meta.size is None:  # keeps its row as it is; looked at again next run
                item.error, item.retry = "cannot read its header now; it stays indexed, and is read on the next run", True
            return item
        try:
            data = imaging.read_file(item.entry)
            item.content_hash = imaging.content_hash(data)
            item.meta = imaging.photo_meta(data)
        except Exception as e:
            return _failed(item, e)
        if self.catalog.has_embedding(item.content_hash):
            return item
        encoder = self._encoder
        if encoder is None:  # the main thread loads the model, then has this decoded (_with_pixels)
            item.data = data
            return item
        return self._decode(item, data, encoder)

    def _decode(self, item: _Item, data: bytes, encoder) -> _Item:
        try:
            image, item.size = imaging.decode(data, max_pixels=self.max_pixels,
                                              draft=getattr(encoder, "image_size", 224),
                                              allow_truncated=self.allow_truncated)
            if image.info.get("truncated"):
                item.warning = "truncated: indexed as far as it could be read (--allow-truncated)"
            item.tensor = encoder.preprocess(image)
        except Exception as e:
            return _failed(item, e)
        return item

    def _decode_later(self, item: _Item) -> _Item:
        data, item.data = item.data, None
        return self._decode(item, data, self._encoder)

    def _take(self, pending: deque, pool: ThreadPoolExecutor) -> _Item:
        """The oldest item, decoded: new content read before the model was loaded is decoded now, after
        loading it (here, in the main thread); what else came back undecoded goes to the workers again."""
        item = pending.popleft().result()
        if item.data is None:
            return item
        self.encoder()
        for i, future in enumerate(pending):
            if future.done() and future.exception() is None and future.result().data is not None:
                pending[i] = pool.submit(self._decode_later, future.result())
        return self._decode_later(item)

    # -- the run --------------------------------------------------------------------------------
    def run(self, roots: Iterable[Path]) -> IndexReport:
        report = IndexReport()
        start = time.perf_counter()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="clipsearch-decode") as pool:
            try:
                for root in roots:
                    self._run_root(Path(root), pool, report)
            except BaseException:  # Ctrl-C, SIGTERM, an error: do not decode what is still queued
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        report.seconds = time.perf_counter() - start
        return report

    def _run_root(self, root: Path, pool: ThreadPoolExecutor, report: IndexReport) -> None:
        root = Path(os.path.abspath(os.path.expanduser(root)))
        if not root.is_dir():
            raise LibraryError(f"{root} is not a readable directory; nothing under it was changed")
        root_b = os.fsencode(root)
        report.roots.append(os.fsdecode(root_b))
        root_id = self.catalog.add_root(root_b)
        scan = self.catalog.new_scan()
        walk_errors = imaging.WalkErrors()

        pending: deque = deque()
        batch: list[_Item] = []
        limit = self.batch_size * 2 + self.workers
        found = [0]

        def counted(entries):
            for e in entries:
                found[0] += 1
                yield e

        for item in self._changed(counted(imaging.walk(root_b, walk_errors, include_hidden=self.include_hidden,
                                                               follow_symlinks=self.follow_symlinks)),
                                  scan, report):
            pending.append(pool.submit(self._prepare, item))
            while len(batch) < self.batch_size and pending and (len(pending) >= limit or pending[0].done()):
                batch.append(self._take(pending, pool))
            # a full batch waits until the next one is queued, so the workers decode it while the model runs
            # (committing as soon as the batch filled left them ~2 pictures, and the model then waited for the
            # next batch's decoding: 0.09 s a batch of ~1 MP pictures)
            if len(batch) >= self.batch_size and len(pending) >= self.batch_size:
                self._commit(batch, root_id, scan, report)
                batch = []
        # the walk is over: everything is queued, so a full batch (perhaps held back above) goes at once
        while batch or pending:
            while len(batch) < self.batch_size and pending:
                batch.append(self._take(pending, pool))
            self._commit(batch, root_id, scan, report)
            batch = []

        for path, reason in walk_errors.errors:
            report.incomplete.append(Skipped(os.fsdecode(path), reason))
        complete = not walk_errors
        if complete and found[0] == 0 and self.catalog.has_live_files_under(root_b):
            # an empty mount point (an unmounted disk or share) looks like a root whose files were all deleted
            report.incomplete.append(Skipped(os.fsdecode(root_b), "root is empty now (not mounted?); nothing under it "
                                                                   "was removed"))
            complete = False
        if complete:
            removed, seq = self.catalog.sweep(root_b, scan)
            report.removed += removed
            if removed:
                self.on_commit(seq)
        self.catalog.touch_root(root_id, complete=complete)

    def _changed(self, entries: Iterator[imaging.Entry], scan: int, report: IndexReport) -> Iterator[_Item]:
        """Split the walk into unchanged files (marked seen) and items to process, a chunk at a time."""
        chunk: list[imaging.Entry] = []

        def flush():
            known = self.catalog.lookup([e.path for e in chunk])
            seen = []
            out = []
            for e in chunk:
                row = known.get(e.path)
                if (row is not None and row.status in ("ok", "failed") and row.size == e.size
                        and row.mtime_ns == e.mtime_ns and row.ino == e.ino
                        and (row.ctime_ns is None or e.ctime_ns is None or row.ctime_ns == e.ctime_ns)):
                    if row.status == "ok" and row.meta_version is None:  # its header was never recorded
                        out.append(_Item(e, is_new=False, row_id=row.id, meta_only=True, content_hash=row.content_hash))
                        continue
                    seen.append(row.id)
                    report.unchanged += 1
                else:
                    out.append(_Item(e, is_new=row is None or row.status == "deleted",
                                     row_id=row.id if row is not None else None))
            self.catalog.mark_seen(seen, scan)
            self.on_progress("found", len(chunk))
            self.on_progress("done", len(seen))
            return out

        for e in entries:
            chunk.append(e)
            if len(chunk) >= 256:
                yield from flush()
                chunk = []
        if chunk:
            yield from flush()

    def _commit(self, batch: list[_Item], root_id: int, scan: int, report: IndexReport) -> None:
        retry = [it for it in batch if it.retry]
        if retry:  # a changed file keeps its old row (seen, so not swept) until the next run; a vanished one is swept
            batch = [it for it in batch if not it.retry]
            self.catalog.mark_seen([it.row_id for it in retry if it.row_id is not None and not it.vanished], scan)
            report.skipped.extend(Skipped(os.fsdecode(it.entry.path), it.error) for it in retry)
            self.on_progress("done", len(retry))
            if not batch:
                return
        # each new content once: copies in this batch share a vector, and content an earlier batch committed
        # after this file was read is reused, never embedded again
        candidates = [it for it in batch if it.error is None and it.tensor is not None]
        known = self.catalog.embedding_ids_for_hashes(it.content_hash for it in candidates) if candidates else {}
        unique: dict[str, _Item] = {}
        for it in candidates:
            if it.content_hash not in known:
                unique.setdefault(it.content_hash, it)
        to_embed = list(unique.values())
        if _crashpoints.ACTIVE:
            _crashpoints.hit("before_embed", hashes=[it.content_hash for it in to_embed])
        vectors = self.encoder().embed_batch([it.tensor for it in to_embed]) if to_embed else None
        records = []
        fresh = {id(it) for it in to_embed}
        by_hash = {it.content_hash: i for i, it in enumerate(to_embed)}
        for it in batch:
            e = it.entry
            rec = Record(path=e.path, size=e.size, mtime_ns=e.mtime_ns, ino=e.ino, content_hash=it.content_hash,
                         error=it.error, ctime_ns=e.ctime_ns)
            if it.size or (it.meta is not None and it.meta.size):  # decoded, else from the header (copies, backfills)
                rec.width, rec.height = it.size or it.meta.size
            if it.meta is not None:
                rec.taken_at, rec.format, rec.meta_version = it.meta.taken_at, it.meta.format, imaging.META_VERSION
            if it.error is None and it.content_hash in by_hash:
                v = vectors[by_hash[it.content_hash]]
                if not np.all(np.isfinite(v)) or not np.isclose(np.linalg.norm(v), 1.0, atol=1e-3):
                    rec.error = "the model produced a non-finite vector for this image"
                else:
                    rec.vector = v
            records.append(rec)
        seq = self.catalog.commit_batch(records, root_id=root_id, scan=scan)
        report.batches += 1
        report.embedded += len(to_embed)
        for it, rec in zip(batch, records):
            if rec.error is not None:
                report.skipped.append(Skipped(os.fsdecode(it.entry.path), rec.error))
                continue
            if it.warning:
                report.warnings.append(Skipped(os.fsdecode(it.entry.path), it.warning))
            if it.meta_only:
                report.unchanged += 1
                continue
            if it.is_new:
                report.added += 1
            else:
                report.updated += 1
            if id(it) not in fresh:
                report.reused += 1
        for it in batch:
            it.tensor = None
        self.on_commit(seq)
        self.on_progress("done", len(batch))
