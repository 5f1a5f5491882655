"""Alembic migrations of a clipsearch library (installed as clipsearch.migrations)."""
