"""The catalog, the single source of truth of a library: roots, files, vectors and meta.

schema.py holds the tables (SQLAlchemy Core), catalog.py every read and write, migrate.py the Alembic
schema upgrades, sqlite.py the few lines only SQLite understands.
"""

from .catalog import DB_NAME, Catalog, backend_for
from .migrate import SCHEMA_HEAD, head_revision, migrate, migrations_dir
from .schema import (FileInfo, FileRow, Record, blob_to_vector, dumps, embeddings_table, files_table, meta_table, metadata,
                     roots_table, vector_to_blob)
from .sqlite import APPLICATION_ID, SqliteBackend

__all__ = ["APPLICATION_ID", "DB_NAME", "SCHEMA_HEAD", "Catalog", "FileInfo", "FileRow", "Record", "SqliteBackend", "backend_for",
           "blob_to_vector", "dumps", "embeddings_table", "files_table", "head_revision", "meta_table", "metadata",
           "DRIVER_ERRORS", "migrate", "migrations_dir", "roots_table", "vector_to_blob"]

DRIVER_ERRORS = SqliteBackend.errors  # the database drivers' own exception classes
