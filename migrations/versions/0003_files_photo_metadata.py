"""files.taken_at, files.format, files.meta_version: the photo's own date (EXIF DateTimeOriginal) and its file
format, read from the image header at index time, and indexes for the filters that search applies before ranking.

Old libraries keep their rows: meta_version NULL means "header never read", and the next index run reads the
header of each such unchanged file (no pixel decoding, no new vector) and fills the columns in.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("files", sa.Column("taken_at", sa.Float))  # seconds since the epoch, the camera's wall clock as UTC
    op.add_column("files", sa.Column("format", sa.Text))  # lower case: jpeg, png, webp, ...
    op.add_column("files", sa.Column("meta_version", sa.Integer))  # NULL: the header was never read
    op.create_index("ix_files_taken_at", "files", ["taken_at"])
    op.create_index("ix_files_mtime_ns", "files", ["mtime_ns"])
    op.create_index("ix_files_format", "files", ["format"])
    op.create_index("ix_files_pixels", "files", [sa.column("width") * sa.column("height")])


def downgrade() -> None:
    for name in ("ix_files_pixels", "ix_files_format", "ix_files_mtime_ns", "ix_files_taken_at"):
        op.drop_index(name, table_name="files")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("meta_version")
        batch.drop_column("format")
        batch.drop_column("taken_at")
