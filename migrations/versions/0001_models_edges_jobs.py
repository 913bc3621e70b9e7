"""models, edges and jobs: the catalog, the lineage graph and detection jobs

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(300), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("hub_id", sa.String(300)),
        sa.Column("revision", sa.String(64)),
        sa.Column("architecture", sa.String(100)),
        sa.Column("config", sa.JSON),
        sa.Column("num_bytes", sa.BigInteger, nullable=False),
        sa.Column("num_parameters", sa.BigInteger, nullable=False),
        sa.Column("storage_path", sa.String(500), nullable=False),
        sa.Column("is_candidate", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "edges",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "parent_id",
            sa.Integer,
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "child_id",
            sa.Integer,
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("relation", sa.String(32), nullable=False, server_default="finetune"),
        sa.Column("score", sa.Float),
        sa.Column("method", sa.String(64)),
        sa.Column("scores", sa.JSON),
        sa.Column("evidence", sa.JSON),
        sa.Column("declared", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("parent_id", "child_id", name="uq_edges_pair"),
        sa.CheckConstraint("parent_id <> child_id", name="ck_edges_no_self"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued", index=True),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("child_id", sa.Integer, sa.ForeignKey("models.id", ondelete="SET NULL")),
        sa.Column("request", sa.JSON),
        sa.Column("result", sa.JSON),
        sa.Column("error", sa.JSON),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name="ck_jobs_status"
        ),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("edges")
    op.drop_table("models")
