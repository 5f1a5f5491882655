"""The SQLite dialect: every line of the catalog that only SQLite understands lives here.

WAL journal, PRAGMAs (busy timeout, foreign keys, synchronous, page size, application id), `BEGIN
IMMEDIATE` for writers, the backup API, integrity_check and WAL checkpoints. Everything else in
clipsearch.store speaks SQLAlchemy Core and runs on any dialect with the same interface (a PostgreSQL
backend is another module with these methods).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as _insert

from ..errors import NotALibraryError

APPLICATION_ID = 0x434C5053  # 'CLPS'


class SqliteBackend:
    """One library database file. Readers share a pool of connections (safe from many threads: each
    call checks one out); writers get a fresh connection and `BEGIN IMMEDIATE`."""

    name = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        self.url = f"sqlite:///{self.db_path}"

    def __repr__(self) -> str:
        return f"SqliteBackend({str(self.db_path)!r})"

    @property
    def location(self) -> str:
        return str(self.db_path)

    def exists(self) -> bool:
        return self.db_path.exists() and self.db_path.stat().st_size > 0

    # -- engines --------------------------------------------------------------------------------
    def engine(self, *, writer: bool, foreign_keys: bool = True) -> sa.Engine:
        # readers: a small pool (a web server's threads each check out a connection per call); writers: NullPool,
        # so a lock is never held by an idle pooled connection and a forked child never inherits one
        if writer:
            engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        else:
            engine = sa.create_engine(self.url, poolclass=sa.pool.QueuePool, pool_size=4, max_overflow=16,
                                      connect_args={"check_same_thread": False})
        pid = os.getpid()

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (SQLAlchemy's pysqlite recipe)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @sa.event.listens_for(engine, "checkout")
        def _checkout(dbapi_conn, record, proxy):
            if os.getpid() != pid:  # a pooled connection inherited through fork is never used by the child
                record.dbapi_connection = proxy.dbapi_connection = None
                raise sa.exc.DisconnectionError("connection from before a fork")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

        return engine

    def path_text(self, column):
        """A bytes column read as text, for LIKE: SQLite's LIKE never matches a BLOB, and CAST reads its bytes as
        UTF-8 text."""
        return sa.cast(column, sa.Text)

    def upsert(self, table: sa.Table, values: dict, keys: list[str]):
        stmt = _insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=keys, set_={k: v for k, v in values.items() if k not in keys})

    # -- before anything writes ----------------------------------------------------------------
    def probe(self) -> None:
        """Refuse a file that is not a clipsearch database before anything writes to it."""
        db_path = self.db_path
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

    def current_revision(self) -> str | None:
        """The schema revision of an existing database, read without taking any lock."""
        if not self.exists():
            return None
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            con.execute("PRAGMA busy_timeout=30000")
            if con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'").fetchone() is None:
                return None
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            return row[0] if row else None
        finally:
            con.close()

    def prepare_new(self) -> None:
        """Page size can only be chosen before the first table, and before WAL."""
        con = sqlite3.connect(self.db_path)
        try:
            con.execute("PRAGMA page_size=16384")
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()

    def backup_before_migration(self, revision: str) -> None:
        backup(self.db_path, self.db_path.with_name(f"{self.db_path.name}.schema-{revision}.bak"))

    def after_migration(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql(f"PRAGMA application_id={APPLICATION_ID}")

    # -- maintenance ------------------------------------------------------------------------------
    def make_durable(self, engine: sa.Engine) -> None:
        """Sync the WAL so that every commit so far survives power loss (before publishing a cache)."""
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("BEGIN IMMEDIATE")
            cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('durable_at', ?)", (repr(time.time()),))
            cur.execute("COMMIT")
        finally:
            raw.close()

    def checkpoint(self, engine: sa.Engine) -> None:
        raw = engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()

    def integrity_check(self, engine: sa.Engine) -> list[str]:
        """PRAGMA integrity_check and foreign_key_check: ['ok'] when the file is sound."""
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            rows = [r[0] for r in cur.execute("PRAGMA integrity_check").fetchall()]
            fk = cur.execute("PRAGMA foreign_key_check").fetchall()
        finally:
            raw.close()
        if fk:
            rows = [r for r in rows if r != "ok"] + [f"foreign key violation in {t} row {rid}" for t, rid, *_ in fk[:20]]
        return rows


def backup(db_path: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API, published atomically."""
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
