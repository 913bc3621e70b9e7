"""api_keys, rate_windows, models.created_by, jobs.created_by, graph_events: access control

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100)),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "role IN ('reader', 'submitter', 'curator', 'admin')", name="ck_api_keys_role"
        ),
    )
    op.create_table(
        "rate_windows",
        sa.Column(
            "key_id",
            sa.Integer,
            sa.ForeignKey("api_keys.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("action", sa.String(16), primary_key=True),
        sa.Column("window_start", sa.BigInteger, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "graph_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False, index=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("models.id", ondelete="SET NULL")),
        sa.Column("child_id", sa.Integer, sa.ForeignKey("models.id", ondelete="SET NULL")),
        sa.Column("parent_name", sa.String(300), nullable=False),
        sa.Column("child_name", sa.String(300), nullable=False),
        sa.Column("job_id", sa.String(36)),
        sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id", ondelete="SET NULL")),
        sa.Column("detail", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    for table in ("models", "jobs"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("created_by", sa.Integer))
            batch.create_foreign_key(
                f"fk_{table}_created_by", "api_keys", ["created_by"], ["id"], ondelete="SET NULL"
            )


def downgrade() -> None:
    for table in ("jobs", "models"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_created_by", type_="foreignkey")
            batch.drop_column("created_by")
    op.drop_table("graph_events")
    op.drop_table("rate_windows")
    op.drop_table("api_keys")
