"""tags: labels given to an image's content by `clipsearch tag` (zero-shot), so filters can select by tag.

Keyed by embedding (one row per content and label), so every copy of a picture carries its tags.

Revision ID: 0004
Revises: 0002 (to be rechained onto 0003 when the filters' migration lands)
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tags",
        sa.Column("embedding_id", sa.Integer, sa.ForeignKey("embeddings.id"), primary_key=True),
        sa.Column("tag", sa.Text, primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("tagged_at", sa.Float, nullable=False),
    )
    op.create_index("ix_tags_tag", "tags", ["tag"])


def downgrade() -> None:
    op.drop_index("ix_tags_tag", "tags")
    op.drop_table("tags")
