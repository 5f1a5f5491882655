"""files.ctime_ns: change detection also compares the inode change time, so an edit that keeps the size and
the mtime (`touch -r`, `exiftool -P`) is still noticed.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("files", sa.Column("ctime_ns", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("ctime_ns")
