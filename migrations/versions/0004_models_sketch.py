"""models.sketch: each model's compact weight sketch, computed at registration, for shortlists

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("sketch", sa.LargeBinary()))
        batch.add_column(sa.Column("sketch_tensors", sa.JSON()))
        batch.add_column(sa.Column("sketch_layout", sa.String(32)))
        batch.create_index("ix_models_sketch_layout", ["sketch_layout"])


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_index("ix_models_sketch_layout")
        batch.drop_column("sketch_layout")
        batch.drop_column("sketch_tensors")
        batch.drop_column("sketch")
