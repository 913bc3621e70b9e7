"""The ``jobs`` table: one detection request, its status, progress and result."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.auth.models import ApiKey
from app.core.db import Base, utcnow


class JobState(StrEnum):
    """Where a job is in its life (stored as its value, the public ``status`` string)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# A job in one of these may still be (or be again) picked up by a worker.
UNFINISHED = (JobState.QUEUED, JobState.RUNNING)


class Job(Base):
    """A detection job. ``id`` is also the Celery task id. ``attempts`` counts claims, so a job
    taken again after its worker died is visible as such (a retry of the same claim after a
    database fault is not a new attempt)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    child_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    request: Mapped[dict | None] = mapped_column(JSON)
    result: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[dict | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    verdict: Mapped[str | None] = mapped_column(String(16), index=True)  # the audit verdict
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When the job was last handed to the broker (the sweeper sends it again if no worker
    # claims it long after), and the claim that holds it while running: who ("host:pid:nonce")
    # and the last sign of life of its worker.
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The API key that submitted it (NULL: submitted without one, or the key row is gone).
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey(ApiKey.id, ondelete="SET NULL"), default=None
    )
