"""jobs.heartbeat_at, jobs.claimed_by, jobs.enqueued_at: jobs that are never lost

A running job's worker writes ``heartbeat_at`` every few seconds; ``claimed_by`` names the claim
(worker and attempt) so that a retry of the same delivery may take the job back while a second
delivery may not; ``enqueued_at`` is when the job was last handed to the broker, so the sweeper
sends again a queued job whose message was lost.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("claimed_by", sa.String(64)))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("enqueued_at")
        batch.drop_column("claimed_by")
        batch.drop_column("heartbeat_at")
