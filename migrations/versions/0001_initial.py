"""The first schema: meta, roots, embeddings (one per content) and files.

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "roots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("added_at", sa.Float, nullable=False),
        sa.Column("last_scan_at", sa.Float),
        sa.Column("last_complete_at", sa.Float),
    )
    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("content_hash", sa.Text, nullable=False, unique=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("live", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_embeddings_seq", "embeddings", ["seq"])
    op.create_table(
        "files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("root_id", sa.Integer, sa.ForeignKey("roots.id")),
        sa.Column("size", sa.Integer),
        sa.Column("mtime_ns", sa.Integer),
        sa.Column("ino", sa.Integer),
        sa.Column("content_hash", sa.Text),
        sa.Column("embedding_id", sa.Integer, sa.ForeignKey("embeddings.id")),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("seen_scan", sa.Integer),
        sa.Column("indexed_at", sa.Float),
    )
    op.create_index("ix_files_embedding_id", "files", ["embedding_id"])


def downgrade() -> None:
    op.drop_table("files")
    op.drop_table("embeddings")
    op.drop_table("roots")
    op.drop_table("meta")
