"""The ``edges`` table: parent → child, inferred from the weights or declared by the uploader."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.auth.models import ApiKey
from app.core.db import Base, utcnow


class Edge(Base):
    """One lineage edge. At most one per (parent, child) pair, never a self-edge, and (enforced
    by ``LineageRepository.add_edge``) never a cycle. ``scores`` holds every method's score,
    ``evidence`` the decision (confidence, margin, method) that produced it."""

    __tablename__ = "edges"
    __table_args__ = (
        UniqueConstraint("parent_id", "child_id", name="uq_edges_pair"),
        CheckConstraint("parent_id <> child_id", name="ck_edges_no_self"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    relation: Mapped[str] = mapped_column(String(32), default="finetune")
    score: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str | None] = mapped_column(String(64))
    scores: Mapped[dict | None] = mapped_column(JSON)
    evidence: Mapped[dict | None] = mapped_column(JSON)
    declared: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GraphEvent(Base):
    """A change to the graph worth a reviewer's eye, kept as history: ``conflict`` (a job's edge
    refused because it would close a cycle; written instead of being dropped silently),
    ``edge_deleted`` and ``edge_set`` (a curator's corrections). The names are copied, so the
    entry still reads after a model is deleted; ``key_id`` is the API key that acted (NULL for a
    job's conflict, which ``job_id`` names)."""

    __tablename__ = "graph_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    child_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    parent_name: Mapped[str] = mapped_column(String(300))
    child_name: Mapped[str] = mapped_column(String(300))
    job_id: Mapped[str | None] = mapped_column(String(36))
    key_id: Mapped[int | None] = mapped_column(ForeignKey(ApiKey.id, ondelete="SET NULL"))
    detail: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
