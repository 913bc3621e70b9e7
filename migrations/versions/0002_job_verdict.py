"""jobs.verdict: the audit verdict of a finished detection, indexed for the daily review

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("verdict", sa.String(16)))
        batch.create_index("ix_jobs_verdict", ["verdict"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_verdict")
        batch.drop_column("verdict")
