"""The Catalog: every read and write of a library's database, in SQLAlchemy Core.

Dialect-neutral: what only one database understands (SQLite's WAL, PRAGMAs, `BEGIN IMMEDIATE`,
integrity_check) is in the backend object (store/sqlite.py). Writes happen in one transaction each;
reads may come from many threads at once (each call checks a connection out of the reader pool).
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sqlalchemy as sa

from .. import _crashpoints
from ..errors import IntegrityError
from .filtering import filter_conditions as _filter_conditions
from .filtering import prefix_range as _prefix_range
from .migrate import migrate
from .schema import (FileInfo, FileRow, Record, blob_to_vector, embeddings_table, files_table, meta_table,
                     roots_table, vector_to_blob)
from .schema import tags_table
from .sqlite import SqliteBackend

DB_NAME = "library.db"

# built once: SQLAlchemy caches the compiled form, so the per-query lookup costs no statement building
_FILES_FOR_EMBEDDINGS = (
    sa.select(files_table.c.embedding_id, files_table.c.path)
    .where(files_table.c.status == "ok", files_table.c.embedding_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(files_table.c.path)
)
_FILE_INFO = (files_table.c.embedding_id, files_table.c.path, files_table.c.mtime_ns, files_table.c.taken_at,
              files_table.c.format, files_table.c.width, files_table.c.height)
_INFO_FOR_EMBEDDINGS = (
    sa.select(*_FILE_INFO)
    .where(files_table.c.status == "ok", files_table.c.embedding_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(files_table.c.path)
)
_HAS_EMBEDDING = sa.select(embeddings_table.c.id).where(embeddings_table.c.content_hash == sa.bindparam("h")).limit(1)


def backend_for(location) -> SqliteBackend:
    """The backend of a database location: a path to an SQLite file (the only dialect so far)."""
    return SqliteBackend(Path(location))


class Catalog:
    """Reads and writes of one library database."""

    def __init__(self, backend: SqliteBackend):
        self.backend = backend
        self._reader = backend.engine(writer=False)
        self._writer = backend.engine(writer=True)

    @property
    def db_path(self) -> Path:
        return self.backend.db_path

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The driver's own exception classes (besides SQLAlchemy's), for telling storage failures apart."""
        return self.backend.errors

    @classmethod
    def open(cls, location) -> "Catalog":
        backend = backend_for(location)
        backend.probe()
        migrate(backend)
        catalog = cls(backend)
        if catalog.get_meta("library_uuid") is not None:
            return catalog
        with catalog.write() as conn:
            if conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "library_uuid")).scalar() is None:
                catalog._set_meta(conn, "library_uuid", uuid.uuid4().hex)
                catalog._set_meta(conn, "seq", "0")
                catalog._set_meta(conn, "scan", "0")
                catalog._set_meta(conn, "created_at", repr(time.time()))
        return catalog

    def close(self) -> None:
        self._reader.dispose()
        self._writer.dispose()

    # -- transactions ---------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self._reader.begin() as conn:
            yield conn

    def _bump_seq(self, conn) -> int:
        seq = int(_get_meta(conn, "seq") or 0) + 1
        self._set_meta(conn, "seq", str(seq))
        return seq

    # -- meta -----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.read() as conn:
            return _get_meta(conn, key)

    def all_meta(self) -> dict[str, str]:
        with self.read() as conn:
            return {k: v for k, v in conn.execute(sa.select(meta_table.c.key, meta_table.c.value))}

    def set_meta(self, **values: str) -> None:
        with self.write() as conn:
            for k, v in values.items():
                self._set_meta(conn, k, v)

    @property
    def seq(self) -> int:
        return int(self.get_meta("seq") or 0)

    def _set_meta(self, conn, key: str, value: str) -> None:
        conn.execute(self.backend.upsert(meta_table, {"key": key, "value": value}, ["key"]))

    def make_durable(self) -> None:
        """Every commit so far survives power loss (before publishing a cache)."""
        self.backend.make_durable(self._writer)

    def checkpoint(self) -> None:
        self.backend.checkpoint(self._writer)

    # -- roots ----------------------------------------------------------------------------------
    def add_root(self, path: bytes) -> int:
        with self.write() as conn:
            row = conn.execute(sa.select(roots_table.c.id).where(roots_table.c.path == path)).first()
            if row:
                return row[0]
            return conn.execute(roots_table.insert().values(path=path, added_at=time.time())).inserted_primary_key[0]

    def roots(self) -> list[dict]:
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(roots_table).order_by(roots_table.c.id))]

    def touch_root(self, root_id: int, *, complete: bool) -> None:
        now = time.time()
        values = {"last_scan_at": now}
        if complete:
            values["last_complete_at"] = now
        with self.write() as conn:
            conn.execute(roots_table.update().where(roots_table.c.id == root_id).values(**values))

    def new_scan(self) -> int:
        with self.write() as conn:
            scan = int(_get_meta(conn, "scan") or 0) + 1
            self._set_meta(conn, "scan", str(scan))
            return scan

    # -- files ----------------------------------------------------------------------------------
    def lookup(self, paths: Sequence[bytes]) -> dict[bytes, FileRow]:
        out: dict[bytes, FileRow] = {}
        if not paths:
            return out
        with self.read() as conn:
            for chunk in _chunks(list(paths), 500):
                rows = conn.execute(
                    sa.select(
                        files_table.c.id, files_table.c.path, files_table.c.size, files_table.c.mtime_ns,
                        files_table.c.ino, files_table.c.content_hash, files_table.c.embedding_id,
                        files_table.c.status, files_table.c.error, files_table.c.ctime_ns, files_table.c.meta_version,
                    ).where(files_table.c.path.in_(chunk))
                )
                for r in rows:
                    out[r.path] = FileRow(*r)
        return out

    def mark_seen(self, file_ids: Sequence[int], scan: int) -> None:
        if not file_ids:
            return
        with self.write() as conn:
            for chunk in _chunks(list(file_ids), 500):
                conn.execute(files_table.update().where(files_table.c.id.in_(chunk)).values(seen_scan=scan))

    def embedding_ids_for_hashes(self, hashes: Iterable[str]) -> dict[str, int]:
        hashes = list(set(hashes))
        out: dict[str, int] = {}
        if not hashes:
            return out
        with self.read() as conn:
            for chunk in _chunks(hashes, 500):
                q = sa.select(embeddings_table.c.content_hash, embeddings_table.c.id).where(
                    embeddings_table.c.content_hash.in_(chunk))
                out.update({h: i for h, i in conn.execute(q)})
        return out

    def commit_batch(self, records: Sequence[Record], *, root_id: int | None, scan: int) -> int:
        """The commit point: one transaction writes a batch's vectors and files. Returns its seq."""
        now = time.time()
        with self.write() as conn:
            seq = self._bump_seq(conn)
            touched: set[int] = set()
            for rec in records:
                old = conn.execute(
                    sa.select(files_table.c.id, files_table.c.embedding_id).where(files_table.c.path == rec.path)
                ).first()
                emb_id = None
                if rec.error is None:
                    emb_id = conn.execute(
                        sa.select(embeddings_table.c.id).where(embeddings_table.c.content_hash == rec.content_hash)
                    ).scalar()
                    if emb_id is None:
                        if rec.vector is None:
                            raise IntegrityError(f"no vector for new content of {os.fsdecode(rec.path)}")
                        emb_id = conn.execute(embeddings_table.insert().values(
                            content_hash=rec.content_hash, vector=vector_to_blob(rec.vector), live=1, seq=seq,
                        )).inserted_primary_key[0]
                    touched.add(emb_id)
                values = dict(
                    path=rec.path, root_id=root_id, size=rec.size, mtime_ns=rec.mtime_ns, ino=rec.ino,
                    content_hash=rec.content_hash, embedding_id=emb_id,
                    status="ok" if rec.error is None else "failed", error=rec.error,
                    width=rec.width, height=rec.height, seq=seq, seen_scan=scan, indexed_at=now,
                    ctime_ns=rec.ctime_ns, taken_at=rec.taken_at, format=rec.format, meta_version=rec.meta_version,
                )
                if old is None:
                    conn.execute(files_table.insert().values(**values))
                else:
                    if old.embedding_id is not None:
                        touched.add(old.embedding_id)
                    conn.execute(files_table.update().where(files_table.c.id == old.id).values(**values))
            _refresh_live(conn, touched, seq)
            if _crashpoints.ACTIVE:
                _crashpoints.hit("mid_commit", seq=seq)
        if _crashpoints.ACTIVE:
            _crashpoints.hit("after_commit", seq=seq,
                             ok={os.fsdecode(r.path): r.content_hash for r in records if r.error is None},
                             failed=[r.path for r in records if r.error is not None],
                             embedded=[r.content_hash for r in records if r.vector is not None])
        return seq

    def has_live_files_under(self, root: bytes) -> bool:
        lo, hi = _prefix_range(root)
        with self.read() as conn:
            return conn.execute(sa.select(files_table.c.id).where(
                files_table.c.path >= lo, files_table.c.path < hi, files_table.c.status != "deleted").limit(1)
            ).first() is not None

    def sweep(self, root: bytes, scan: int) -> tuple[int, int]:
        """Tombstone files under `root` that this scan did not see. Returns (removed files, seq)."""
        lo, hi = _prefix_range(root)
        with self.write() as conn:
            cond = sa.and_(
                files_table.c.path >= lo, files_table.c.path < hi,
                files_table.c.status != "deleted",
                sa.or_(files_table.c.seen_scan.is_(None), files_table.c.seen_scan != scan),
            )
            gone = conn.execute(sa.select(files_table.c.id, files_table.c.embedding_id).where(cond)).all()
            if not gone:
                return 0, int(_get_meta(conn, "seq") or 0)
            seq = self._bump_seq(conn)
            conn.execute(files_table.update().where(cond).values(status="deleted", seq=seq))
            _refresh_live(conn, {e for _, e in gone if e is not None}, seq)
            if _crashpoints.ACTIVE:
                _crashpoints.hit("mid_sweep", seq=seq)
        if _crashpoints.ACTIVE:
            _crashpoints.hit("after_sweep", seq=seq, removed=len(gone))
        return len(gone), seq

    # -- vectors for the cache and for search ---------------------------------------------------
    def live_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        with self.read() as conn:
            rows = conn.execute(
                sa.select(embeddings_table.c.id, embeddings_table.c.vector).where(embeddings_table.c.live == 1)
                .order_by(embeddings_table.c.id)
            ).all()
        return _stack(rows, dim)

    def changes_since(self, seq: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embeddings whose liveness changed after `seq`: (ids to remove, ids to add, their vectors)."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(embeddings_table.c.id, embeddings_table.c.live, embeddings_table.c.vector)
                .where(embeddings_table.c.seq > seq).order_by(embeddings_table.c.id)
            ).all()
        dead = np.array([r.id for r in rows if not r.live], dtype=np.int64)
        ids, vecs = _stack([(r.id, r.vector) for r in rows if r.live], dim)
        return dead, ids, vecs

    def files_for_embeddings(self, ids: Sequence[int]) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        with self.read() as conn:
            for chunk in _chunks([int(i) for i in ids], 500):
                for eid, path in conn.execute(_FILES_FOR_EMBEDDINGS, {"ids": chunk}):
                    out.setdefault(eid, []).append(path)
        return out

    def has_embedding(self, content_hash: str) -> bool:
        """Whether this content is embedded already (safe to call from many threads at once)."""
        with self._reader.connect() as conn:
            return conn.execute(_HAS_EMBEDDING, {"h": content_hash}).first() is not None

    # -- filters (applied before ranking) ------------------------------------------------------------
    def candidate_embedding_ids(self, filters, limit: int) -> list[int] | None:
        """The embedding ids of live files that pass `filters` (a checked query.Filters), or None when there
        are more than `limit` of them (the caller then scans every vector and checks the best ones)."""
        conds, glob = _filter_conditions(filters, self.backend.path_text)
        with self.read() as conn:
            if glob is None:
                q = sa.select(files_table.c.embedding_id).where(*conds).distinct().limit(limit + 1)
                ids = [r[0] for r in conn.execute(q)]
            else:
                q = sa.select(files_table.c.embedding_id, files_table.c.path).where(*conds).limit(limit + 1)
                rows = conn.execute(q).all()
                if len(rows) > limit:
                    return None
                ids = list(dict.fromkeys(e for e, p in rows if glob.matches(p)))
        return None if len(ids) > limit else ids

    def file_infos(self, ids: Sequence[int], filters=None) -> dict[int, list[FileInfo]]:
        """The live files (passing `filters`, when given) of these embeddings, path order, with what a
        result shows and sorts by."""
        out: dict[int, list[FileInfo]] = {}
        glob = None
        if filters is not None:
            conds, glob = _filter_conditions(filters, self.backend.path_text)
            stmt = sa.select(*_FILE_INFO).where(*conds, files_table.c.embedding_id.in_(
                sa.bindparam("ids", expanding=True))).order_by(files_table.c.path)
        else:
            stmt = _INFO_FOR_EMBEDDINGS
        with self.read() as conn:
            for chunk in _chunks([int(i) for i in ids], 500):
                for row in conn.execute(stmt, {"ids": chunk}):
                    if glob is None or glob.matches(row.path):
                        out.setdefault(row.embedding_id, []).append(FileInfo(*row[1:]))
        return out

    def embedding_by_hash(self, content_hash: str) -> tuple[int, np.ndarray] | None:
        """The live embedding of this content, when the library has one."""
        with self.read() as conn:
            row = conn.execute(sa.select(embeddings_table.c.id, embeddings_table.c.vector).where(
                embeddings_table.c.content_hash == content_hash, embeddings_table.c.live == 1)).first()
        return (int(row[0]), blob_to_vector(row[1]).copy()) if row else None

    def embedding(self, emb_id: int) -> tuple[np.ndarray, list[bytes]] | None:
        """A live embedding's vector and the live files that use it."""
        with self.read() as conn:
            vec = conn.execute(sa.select(embeddings_table.c.vector).where(
                embeddings_table.c.id == int(emb_id), embeddings_table.c.live == 1)).scalar()
            if vec is None:
                return None
            paths = [r[0] for r in conn.execute(sa.select(files_table.c.path).where(
                files_table.c.embedding_id == int(emb_id), files_table.c.status == "ok").order_by(files_table.c.path))]
        return blob_to_vector(vec).copy(), paths

    def file_embedding_id(self, path: bytes) -> int | None:
        """The embedding a live indexed file uses."""
        with self.read() as conn:
            return conn.execute(sa.select(files_table.c.embedding_id).where(
                files_table.c.path == path, files_table.c.status == "ok")).scalar()

    def integrity_check(self) -> list[str]:
        """['ok'] when the database file is sound, else what is wrong."""
        return self.backend.integrity_check(self._reader)

    def live_file_vectors(self) -> Iterator[tuple[bytes, int | None, bytes | None, int | None]]:
        """(path, embedding id, vector blob, live flag) for every file with status 'ok', streamed."""
        with self.read() as conn:
            q = sa.select(files_table.c.path, files_table.c.embedding_id, embeddings_table.c.vector,
                          embeddings_table.c.live).select_from(
                files_table.outerjoin(embeddings_table, embeddings_table.c.id == files_table.c.embedding_id)
            ).where(files_table.c.status == "ok").order_by(files_table.c.id)
            for row in conn.execution_options(yield_per=2000).execute(q):
                yield tuple(row)

    def live_embedding_ids(self) -> list[int]:
        with self.read() as conn:
            return [r[0] for r in conn.execute(sa.select(embeddings_table.c.id).where(embeddings_table.c.live == 1))]

    def counts(self) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute(sa.select(files_table.c.status, sa.func.count()).group_by(files_table.c.status)).all()
            live = conn.execute(sa.select(sa.func.count()).select_from(embeddings_table)
                                .where(embeddings_table.c.live == 1)).scalar()
        counts = {"ok": 0, "failed": 0, "deleted": 0}
        counts.update({s: n for s, n in rows})
        counts["vectors"] = live
        return counts

    def failures(self) -> list[tuple[bytes, str]]:
        with self.read() as conn:
            return [(p, e) for p, e in conn.execute(
                sa.select(files_table.c.path, files_table.c.error).where(files_table.c.status == "failed")
                .order_by(files_table.c.path))]

    # -- reads for the web page -------------------------------------------------------------------
    def image_files(self, emb_id: int) -> list[dict]:
        """The live files of a live embedding, by path: what the web page may show for an image id."""
        with self.read() as conn:
            q = (sa.select(files_table.c.path, files_table.c.root_id, files_table.c.size, files_table.c.mtime_ns,
                           files_table.c.ino, files_table.c.content_hash, files_table.c.width, files_table.c.height,
                           files_table.c.indexed_at)
                 .select_from(files_table.join(embeddings_table, embeddings_table.c.id == files_table.c.embedding_id))
                 .where(files_table.c.embedding_id == int(emb_id), files_table.c.status == "ok",
                        embeddings_table.c.live == 1)
                 .order_by(files_table.c.path))
            return [dict(r._mapping) for r in conn.execute(q)]


    # -- knowing and managing the library (clipsearch.tools) ------------------------------------

    def list_files(self, *, root: bytes | None = None, statuses: Sequence[str] = ("ok", "failed")) -> Iterator[dict]:
        """Indexed files (status ok or failed by default) in path order, optionally under one root, streamed."""
        with self.read() as conn:
            for row in conn.execution_options(yield_per=2000).execute(_files_query(root, statuses)):
                yield dict(row._mapping)

    def count_files_under(self, root: bytes, statuses: Sequence[str] = ("ok",)) -> int:
        lo, hi = _prefix_range(root)
        with self.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(files_table).where(
                files_table.c.path >= lo, files_table.c.path < hi, files_table.c.status.in_(list(statuses)))).scalar())

    def shared_embeddings(self) -> dict[int, list[bytes]]:
        """Embeddings that two or more live files share (exact copies: one content hash), with their paths."""
        with self.read() as conn:
            many = (sa.select(files_table.c.embedding_id).where(files_table.c.status == "ok")
                    .group_by(files_table.c.embedding_id).having(sa.func.count() > 1))
            rows = conn.execute(sa.select(files_table.c.embedding_id, files_table.c.path).where(
                files_table.c.status == "ok", files_table.c.embedding_id.in_(many)).order_by(files_table.c.path))
            out: dict[int, list[bytes]] = {}
            for eid, path in rows:
                out.setdefault(eid, []).append(path)
        return out

    def forget_root(self, root: bytes) -> tuple[int, int]:
        """Remove a root and every file row under it in one transaction; vectors no file uses any more
        stop being live (the cache drops them on catch-up; the rows stay, so indexing the folder again
        reuses them without the model). Returns (files removed, seq)."""
        lo, hi = _prefix_range(root)
        with self.write() as conn:
            root_id = conn.execute(sa.select(roots_table.c.id).where(roots_table.c.path == root)).scalar()
            under = sa.and_(files_table.c.path >= lo, files_table.c.path < hi)
            cond = sa.or_(under, files_table.c.root_id == root_id) if root_id is not None else under
            gone = conn.execute(sa.select(files_table.c.id, files_table.c.embedding_id, files_table.c.status)
                                .where(cond)).all()
            seq = self._bump_seq(conn)
            if gone:
                conn.execute(files_table.delete().where(cond))
            if root_id is not None:
                conn.execute(roots_table.delete().where(roots_table.c.id == root_id))
            _refresh_live(conn, {e for _, e, _ in gone if e is not None}, seq)
        return sum(1 for *_, s in gone if s != "deleted"), seq

    # -- tags ---------------------------------------------------------------------------------------
    def set_tags(self, tags: dict[int, Sequence[tuple[str, float]]], *, replace: bool = True) -> int:
        """Store labels of embeddings ({id: [(tag, probability), ...]}); `replace` drops their old tags first.
        Returns the number of (embedding, tag) rows written."""
        now = time.time()
        n = 0
        with self.write() as conn:
            ids = [int(i) for i in tags]
            if replace:
                for chunk in _chunks(ids, 500):
                    conn.execute(tags_table.delete().where(tags_table.c.embedding_id.in_(chunk)))
            for eid, labels in tags.items():
                for tag, score in labels:
                    conn.execute(self.backend.upsert(tags_table, {"embedding_id": int(eid), "tag": str(tag),
                                                                  "score": float(score), "tagged_at": now},
                                                     ["embedding_id", "tag"]))
                    n += 1
        return n

    def tags_of(self, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
        """Each embedding's tags, most probable first."""
        out: dict[int, list[tuple[str, float]]] = {}
        with self.read() as conn:
            for chunk in _chunks([int(i) for i in ids], 500):
                q = (sa.select(tags_table.c.embedding_id, tags_table.c.tag, tags_table.c.score)
                     .where(tags_table.c.embedding_id.in_(chunk))
                     .order_by(tags_table.c.embedding_id, tags_table.c.score.desc(), tags_table.c.tag))
                for eid, tag, score in conn.execute(q):
                    out.setdefault(eid, []).append((tag, float(score)))
        return out

    def tag_counts(self) -> dict[str, int]:
        """How many live images' contents carry each tag."""
        with self.read() as conn:
            q = (sa.select(tags_table.c.tag, sa.func.count(sa.distinct(tags_table.c.embedding_id)))
                 .select_from(tags_table.join(embeddings_table, embeddings_table.c.id == tags_table.c.embedding_id))
                 .where(embeddings_table.c.live == 1).group_by(tags_table.c.tag).order_by(tags_table.c.tag))
            return {t: int(n) for t, n in conn.execute(q)}

    @staticmethod
    def tag_condition(tags: Sequence[str]):
        """A condition on files: their content carries any of these tags (for the search filters)."""
        return files_table.c.embedding_id.in_(
            sa.select(tags_table.c.embedding_id).where(tags_table.c.tag.in_(list(tags))))

    def embedding_ids_with_tags(self, tags: Sequence[str]) -> list[int]:
        """Live embeddings (used by a live file) whose content carries any of these tags, in id order."""
        with self.read() as conn:
            q = (sa.select(files_table.c.embedding_id).where(files_table.c.status == "ok", self.tag_condition(tags))
                 .distinct().order_by(files_table.c.embedding_id))
            return [int(r[0]) for r in conn.execute(q)]


def _refresh_live(conn, emb_ids: set[int], seq: int) -> None:
    """Recompute `live` for these embeddings; stamp `seq` on the ones whose liveness changed."""
    for chunk in _chunks(sorted(emb_ids), 500):
        used = sa.exists().where(files_table.c.embedding_id == embeddings_table.c.id, files_table.c.status == "ok")
        live_now = sa.case((used, 1), else_=0)
        conn.execute(
            embeddings_table.update()
            .where(embeddings_table.c.id.in_(chunk), embeddings_table.c.live != live_now)
            .values(live=live_now, seq=seq)
        )


def _stack(rows, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vecs = np.empty((len(rows), dim), dtype=np.float32)
    for i, r in enumerate(rows):
        v = blob_to_vector(r[1])
        if v.shape[0] != dim:
            raise IntegrityError(f"embedding {r[0]} has dimension {v.shape[0]}, the library's is {dim}")
        vecs[i] = v
    return ids, vecs


def _get_meta(conn, key: str) -> str | None:
    return conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == key)).scalar()


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _files_query(root: bytes | None, statuses: Sequence[str]):
    q = sa.select(files_table.c.path, files_table.c.status, files_table.c.error, files_table.c.embedding_id,
                  files_table.c.size, files_table.c.width, files_table.c.height, files_table.c.mtime_ns,
                  files_table.c.indexed_at).where(files_table.c.status.in_(list(statuses)))
    if root is not None:
        lo, hi = _prefix_range(root)
        q = q.where(files_table.c.path >= lo, files_table.c.path < hi)
    return q.order_by(files_table.c.path)
