"""Schema migrations: the Alembic scripts shipped inside the package, applied when a library is opened."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from .. import _crashpoints
from ..errors import SchemaTooNewError

SCHEMA_HEAD = "0004"  # the newest Alembic revision (a test checks it against migrations/)


def migrations_dir() -> Path:
    """The Alembic scripts: `clipsearch/migrations` when installed, the top-level migrations/ in a checkout."""
    import importlib.util

    spec = importlib.util.find_spec("clipsearch.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent.parent / "migrations"


def _config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def migrate(backend) -> None:
    """Bring the database to the newest schema, in one transaction (DDL included).

    An up-to-date database is recognised without importing Alembic or taking a write lock, so a
    query never waits for an indexing run to open its library.
    """
    before = backend.current_revision()
    if before == SCHEMA_HEAD:
        return
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = _config()
    script = ScriptDirectory.from_config(cfg)
    known = {s.revision for s in script.walk_revisions()}
    if not backend.exists():
        backend.prepare_new()
    if before is not None and before in known:
        backend.backup_before_migration(before)
    engine = backend.engine(writer=True, foreign_keys=False)  # batch migrations copy tables
    try:
        with engine.begin() as conn:  # the whole migration, DDL included, or nothing
            current = None
            if sa.inspect(conn).has_table("alembic_version"):
                current = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            if current is not None and current not in known:
                raise SchemaTooNewError(f"{backend.location} was written by a newer clipsearch (schema {current}); "
                                        f"upgrade clipsearch to open it")
            if current == script.get_current_head():
                return
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            backend.after_migration(conn)
            if _crashpoints.ACTIVE:
                _crashpoints.hit("mid_migration")
    finally:
        engine.dispose()
