"""All SQL of detection jobs: the ``jobs`` table (the caller's session commits)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.detection.models import UNFINISHED, Job, JobState
from app.registry.models import Model

# Progress recorded when a job is claimed: it has started, nothing is scored yet.
CLAIMED_PROGRESS = 0.05


class JobRepository:
    """Reads and writes of job rows within the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, job: Job) -> Job:
        """Insert ``job`` (flushed, so its row exists within the transaction)."""
        self.session.add(job)
        self.session.flush()
        return job

    def get(self, job_id: str) -> Job | None:
        """The job with this id, if any."""
        return self.session.get(Job, job_id)

    def claim(self, job_id: str) -> Job | None:
        """Atomically mark the job running and count the attempt; None if it is already finished
        (or unknown). A job still ``running`` is claimable: its previous worker died."""
        claimed = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(UNFINISHED))
            .values(
                status=JobState.RUNNING,
                attempts=Job.attempts + 1,
                started_at=utcnow(),
                progress=CLAIMED_PROGRESS,
            )
        ).rowcount
        return self.session.get(Job, job_id) if claimed else None

    def set_progress(self, job_id: str, value: float) -> None:
        """Record a running job's progress (0–1)."""
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobState.RUNNING)
            .values(progress=value)
        )

    def unfinished_ids(self) -> list[str]:
        """Ids of the jobs left queued or running, oldest first."""
        return list(
            self.session.scalars(
                select(Job.id).where(Job.status.in_(UNFINISHED)).order_by(Job.created_at)
            )
        )

    def with_verdict(self, verdict: str, limit: int, offset: int) -> list[tuple[Job, str]]:
        """Finished jobs with this audit verdict and their child's name, newest first."""
        rows = self.session.execute(
            select(Job, Model.name)
            .join(Model, Job.child_id == Model.id)
            .where(Job.verdict == verdict)
            .order_by(Job.finished_at.desc(), Job.id)
            .limit(limit)
            .offset(offset)
        )
        return [(job, name) for job, name in rows]

    def recent(self, limit: int) -> list[tuple[Job, str | None]]:
        """The ``limit`` newest jobs with their child's name (None if the model was deleted)."""
        rows = self.session.execute(
            select(Job, Model.name)
            .outerjoin(Model, Model.id == Job.child_id)
            .order_by(Job.created_at.desc(), Job.id)
            .limit(limit)
        )
        return [(job, name) for job, name in rows]

    def latest_results(self, model_ids: Iterable[int]) -> dict[int, dict]:
        """The result of each model's newest succeeded job, by model id (models without one are
        absent)."""
        ids = list(set(model_ids))
        if not ids:
            return {}
        rows = self.session.execute(
            select(Job.child_id, Job.result)
            .where(Job.child_id.in_(ids), Job.status == JobState.SUCCEEDED)
            .order_by(Job.child_id, Job.created_at.desc(), Job.finished_at.desc())
        )
        latest: dict[int, dict] = {}
        for child_id, result in rows:
            if child_id not in latest and isinstance(result, dict):
                latest[child_id] = result
        return latest
