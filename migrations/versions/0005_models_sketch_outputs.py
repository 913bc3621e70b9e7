"""models.sketch_outputs: the function-space part of each model's sketch, for shortlists

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("sketch_outputs", sa.LargeBinary()))
        batch.add_column(sa.Column("sketch_outputs_key", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("sketch_outputs_key")
        batch.drop_column("sketch_outputs")
