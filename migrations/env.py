"""Alembic environment: clipsearch passes its own open connection; nothing here reads alembic.ini."""

from alembic import context

from clipsearch.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` from a checkout, against a scratch database
    import sqlalchemy as sa

    url = config.get_main_option("sqlalchemy.url") or "sqlite:///scratch-migrations.db"
    connection = sa.create_engine(url).connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
