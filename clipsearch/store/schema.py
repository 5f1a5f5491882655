"""The catalog's tables, in SQLAlchemy Core (dialect-neutral), and the row types that travel with them.

Tables (created by the Alembic migrations in migrations/, applied when a library is opened):
  meta        key/value: library_uuid, model name and fingerprint, dim, seq (monotonic commit counter)
  roots       folders the user indexed
  embeddings  one unit vector per distinct file content (content_hash UNIQUE); `live` says whether a
              file with status 'ok' refers to it; `seq` is the commit that last changed the row.
              Its id is the FAISS id; ids are never reused.
  files       one row per path seen: status 'ok' | 'failed' | 'deleted', stat fields for change
              detection, the content hash and the embedding it uses, and what search filters on: size
              in pixels, the format and the photo's own date (taken_at, EXIF DateTimeOriginal: the
              camera's wall clock read as UTC, in seconds since the epoch); meta_version NULL means
              the image header was never read (a library from before schema 0003).
Paths are stored as bytes (os.fsencode), so names that are not UTF-8 round-trip exactly. Vectors are
little-endian float32 blobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

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
    sa.Column("taken_at", sa.Float),  # schema 0003
    sa.Column("format", sa.Text),  # schema 0003
    sa.Column("meta_version", sa.Integer),  # schema 0003
    sa.Index("ix_files_taken_at", "taken_at"),
    sa.Index("ix_files_mtime_ns", "mtime_ns"),
    sa.Index("ix_files_format", "format"),
)
PIXELS = files_table.c.width * files_table.c.height  # the expression ix_files_pixels indexes: filters use this one
sa.Index("ix_files_pixels", PIXELS)


tags_table = sa.Table(  # schema 0004: labels of an image's content (clipsearch tag), shared by its copies
    "tags", metadata,
    sa.Column("embedding_id", sa.Integer, sa.ForeignKey("embeddings.id"), primary_key=True),
    sa.Column("tag", sa.Text, primary_key=True),
    sa.Column("score", sa.Float, nullable=False),  # the label's probability when it was given
    sa.Column("tagged_at", sa.Float, nullable=False),
    sa.Index("ix_tags_tag", "tag"),
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
    meta_version: int | None = None


@dataclass(frozen=True)
class FileInfo:
    """What a search result shows about its file (and sorts by)."""

    path: bytes
    mtime_ns: int | None
    taken_at: float | None
    format: str | None
    width: int | None
    height: int | None


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
    taken_at: float | None = None  # the photo's own date (imaging.PhotoMeta)
    format: str | None = None
    meta_version: int | None = None  # set when the header was read (imaging.META_VERSION)


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
