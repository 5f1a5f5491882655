"""The catalog: SQLite through SQLAlchemy, the single source of truth of a library.

Tables (created by the Alembic migrations in migrations/, applied when a library is opened):
  meta        key/value: library_uuid, model name and fingerprint, dim, seq (monotonic commit counter)
  roots       folders the user indexed
  embeddings  one unit vector per distinct file content (content_hash UNIQUE); `live` says whether a
              file with status 'ok' refers to it; `seq` is the commit that last changed the row.
              Its id is the FAISS id. AUTOINCREMENT: ids are never reused.
  files       one row per path seen: status 'ok' | 'failed' | 'deleted', stat fields for change
              detection, the content hash and the embedding it uses.
Paths are stored as bytes (os.fsencode), so names that are not UTF-8 round-trip exactly.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sqlalchemy as sa

from . import _crashpoints
from .errors import IntegrityError, NotALibraryError, SchemaTooNewError

APPLICATION_ID = 0x434C5053  # 'CLPS'
DB_NAME = "library.db"

metadata = sa.MetaData()

meta_table = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
roots_table = sa.Table(
    "roots", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("added_at", sa.Float, nullable=False),
    sa.Column("last_scan_at", sa.Float),
    sa.Column("last_complete_at", sa.Float),
)
embeddings_table = sa.Table(
    "embeddings", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("content_hash", sa.Text, nullable=False, unique=True),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("live", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False, index=True),
    sqlite_autoincrement=True,
)
files_table = sa.Table(
    "files", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("root_id", sa.Integer, sa.ForeignKey("roots.id")),
    sa.Column("size", sa.Integer),
    sa.Column("mtime_ns", sa.Integer),
    sa.Column("ino", sa.Integer),
    sa.Column("content_hash", sa.Text),
    sa.Column("embedding_id", sa.Integer, sa.ForeignKey("embeddings.id"), index=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("seen_scan", sa.Integer),
    sa.Column("indexed_at", sa.Float),
    sa.Column("ctime_ns", sa.Integer),  # schema 0002
)


def vector_to_blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def blob_to_vector(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f4")


@dataclass
class FileRow:
    id: int
    path: bytes
    size: int | None
    mtime_ns: int | None
    ino: int | None
    content_hash: str | None
    embedding_id: int | None
    status: str
    error: str | None
    ctime_ns: int | None = None


@dataclass
class Record:
    """One file's outcome in a batch: a vector (new content), a reused embedding, or a failure."""

    path: bytes
    size: int
    mtime_ns: int
    ino: int
    content_hash: str | None = None
    vector: np.ndarray | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    ctime_ns: int | None = None


def _make_engine(db_path: Path, *, immediate: bool) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{db_path}", poolclass=sa.pool.NullPool)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (SQLAlchemy's pysqlite recipe)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def probe_database(db_path: Path) -> None:
    """Refuse a file that is not a clipsearch database before anything writes to it."""
    if not db_path.exists():
        return
    if not db_path.is_file():
        raise NotALibraryError(f"{db_path} is not a regular file")
    with open(db_path, "rb") as f:
        head = f.read(100)
    if len(head) == 0:
        return  # an empty file: a library that crashed before its first write
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        raise NotALibraryError(f"{db_path} is not a clipsearch library (not an SQLite database); it was left untouched")
    app_id = int.from_bytes(head[68:72], "big")
    if app_id not in (0, APPLICATION_ID):
        raise NotALibraryError(f"{db_path} is an SQLite database of another application; it was left untouched")
    if app_id == 0:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
        if tables and "alembic_version" not in tables:
            raise NotALibraryError(f"{db_path} is an SQLite database but not a clipsearch library; it was left untouched")


def migrations_dir() -> Path:
    """The Alembic scripts: `clipsearch/migrations` when installed, the top-level migrations/ in a checkout."""
    import importlib.util

    spec = importlib.util.find_spec("clipsearch.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "migrations"


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return ScriptDirectory.from_config(cfg).get_current_head()


SCHEMA_HEAD = "0002"  # the newest Alembic revision (a test checks it against migrations/)


def current_revision(db_path: Path) -> str | None:
    """The schema revision of an existing database, read without taking any lock."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        con.execute("PRAGMA busy_timeout=30000")
        if con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'").fetchone() is None:
            return None
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    finally:
        con.close()


def migrate(db_path: Path) -> None:
    """Bring the database to the newest schema, in one transaction (DDL included).

    An up-to-date database is recognised without importing Alembic or taking a write lock, so a
    query never waits for an indexing run to open its library.
    """
    existing = db_path.exists() and db_path.stat().st_size > 0
    before = current_revision(db_path) if existing else None
    if before == SCHEMA_HEAD:
        return
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    script = ScriptDirectory.from_config(cfg)
    if not db_path.exists() or db_path.stat().st_size == 0:
        # page size can only be chosen before the first table, and before WAL
        con = sqlite3.connect(db_path)
        try:
            con.execute("PRAGMA page_size=16384")
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    if before is not None and before in {s.revision for s in script.walk_revisions()}:
        backup(db_path, db_path.with_name(f"{db_path.name}.schema-{before}.bak"))
    engine = _make_engine(db_path, immediate=True)

    @sa.event.listens_for(engine, "connect")
    def _no_fk(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA foreign_keys=OFF")  # batch migrations copy tables

    try:
        with engine.begin() as conn:  # BEGIN IMMEDIATE: the whole migration, DDL included, or nothing
            current = conn.exec_driver_sql(
                "SELECT version_num FROM alembic_version"
            ).scalar() if _has_table(conn, "alembic_version") else None
            if current is not None and current not in {s.revision for s in script.walk_revisions()}:
                raise SchemaTooNewError(
                    f"{db_path} was written by a newer clipsearch (schema {current}); upgrade clipsearch to open it"
                )
            if current == script.get_current_head():
                return
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.exec_driver_sql(f"PRAGMA application_id={APPLICATION_ID}")
            if _crashpoints.ACTIVE:
                _crashpoints.hit("mid_migration")
    finally:
        engine.dispose()


def backup(db_path: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API (before a migration), published atomically."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _has_table(conn, name: str) -> bool:
    return conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
    ).first() is not None


class Catalog:
    """Reads and writes of one library database. Writes happen in `BEGIN IMMEDIATE` transactions."""

    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        self._reader = _make_engine(self.db_path, immediate=False)
        self._writer = _make_engine(self.db_path, immediate=True)

    @classmethod
    def open(cls, db_path: Path) -> "Catalog":
        db_path = Path(db_path)
        probe_database(db_path)
        migrate(db_path)
        catalog = cls(db_path)
        if catalog.get_meta("library_uuid") is not None:
            return catalog
        with catalog.write() as conn:
            if conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "library_uuid")).scalar() is None:
                _set_meta(conn, "library_uuid", uuid.uuid4().hex)
                _set_meta(conn, "seq", "0")
                _set_meta(conn, "scan", "0")
                _set_meta(conn, "created_at", repr(time.time()))
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
        _set_meta(conn, "seq", str(seq))
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
                _set_meta(conn, k, v)

    @property
    def seq(self) -> int:
        return int(self.get_meta("seq") or 0)

    def make_durable(self) -> None:
        """Sync the WAL so that every commit so far survives power loss (before publishing a cache)."""
        raw = self._writer.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("BEGIN IMMEDIATE")
            cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('durable_at', ?)", (repr(time.time()),))
            cur.execute("COMMIT")
        finally:
            raw.close()

    def checkpoint(self) -> None:
        raw = self._writer.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()

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
            _set_meta(conn, "scan", str(scan))
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
                        files_table.c.status, files_table.c.error, files_table.c.ctime_ns,
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
                    ctime_ns=rec.ctime_ns,
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
                # plain SQL: this runs once per query, and building the SQLAlchemy statement cost more than the lookup
                sql = ("SELECT embedding_id, path FROM files WHERE status = 'ok' AND embedding_id IN "
                       f"({','.join('?' * len(chunk))}) ORDER BY path")
                for eid, path in conn.exec_driver_sql(sql, tuple(chunk)):
                    out.setdefault(eid, []).append(path)
        return out

    def integrity_check(self) -> list[str]:
        """PRAGMA integrity_check and foreign_key_check: ['ok'] when the file is sound."""
        raw = self._reader.raw_connection()
        try:
            cur = raw.cursor()
            rows = [r[0] for r in cur.execute("PRAGMA integrity_check").fetchall()]
            fk = cur.execute("PRAGMA foreign_key_check").fetchall()
        finally:
            raw.close()
        if fk:
            rows = [r for r in rows if r != "ok"] + [f"foreign key violation in {t} row {rid}" for t, rid, *_ in fk[:20]]
        return rows

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

    def has_embedding(self, content_hash: str) -> bool:
        """Whether this content has a vector already. Safe from several threads at once: the engine is shared,
        each call takes its own connection (a connection must not be shared between threads)."""
        with self._reader.connect() as conn:
            return conn.execute(sa.select(embeddings_table.c.id)
                                .where(embeddings_table.c.content_hash == content_hash).limit(1)).first() is not None


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


def _prefix_range(root: bytes) -> tuple[bytes, bytes]:
    """The byte range of paths strictly inside directory `root`."""
    base = root.rstrip(b"/") + b"/"
    return base, base[:-1] + b"0"  # '0' is the byte after '/'


def _get_meta(conn, key: str) -> str | None:
    return conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == key)).scalar()


def _set_meta(conn, key: str, value: str) -> None:
    from sqlalchemy.dialects.sqlite import insert

    stmt = insert(meta_table).values(key=key, value=value)
    conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value}))


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
