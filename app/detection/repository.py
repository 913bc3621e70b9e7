"""All SQL of detection jobs: the ``jobs`` table (the caller's session commits)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import and_, case, or_, select, update
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

    def claim(self, job_id: str, token: str, stale_before: datetime) -> Job | None:
        """Atomically mark the job running under claim ``token`` and count the attempt; None if
        another claim holds it or it is finished (or unknown).

        Claimable: a queued job; a running job whose worker's heartbeat is older than
        ``stale_before`` (that worker died); and a running job already held by ``token`` (the same
        delivery retried after a database fault, which is not a new attempt). A second delivery
        of a job whose worker is alive finds it taken, so a job never runs twice at once."""
        now = utcnow()
        claimed = self.session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                or_(
                    Job.status == JobState.QUEUED,
                    and_(
                        Job.status == JobState.RUNNING,
                        or_(
                            Job.claimed_by == token,
                            Job.heartbeat_at.is_(None),
                            Job.heartbeat_at < stale_before,
                        ),
                    ),
                ),
            )
            .values(
                status=JobState.RUNNING,
                attempts=Job.attempts + case((Job.claimed_by == token, 0), else_=1),
                claimed_by=token,
                started_at=now,
                heartbeat_at=now,
                progress=CLAIMED_PROGRESS,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if not claimed:
            return None
        job = self.session.get(Job, job_id)
        self.session.refresh(job)
        return job

    def heartbeat(self, job_id: str, token: str, progress: float | None = None) -> bool:
        """Record that claim ``token`` is alive (and its progress, 0–1, if given); False if the
        job is no longer running under that claim (the sweeper gave it to another worker, or it
        ended)."""
        values: dict = {"heartbeat_at": utcnow()}
        if progress is not None:
            values["progress"] = progress
        return bool(
            self.session.execute(
                update(Job)
                .where(Job.id == job_id, Job.claimed_by == token, Job.status == JobState.RUNNING)
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount
        )

    def mark_sent(self, job_id: str, previous: datetime | None, now: datetime) -> bool:
        """Record that queued job ``job_id`` is being sent to the broker now, if its last
        sending is still ``previous`` (compare-and-set: of two sweepers, one sends)."""
        seen = Job.enqueued_at.is_(None) if previous is None else Job.enqueued_at == previous
        return bool(
            self.session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobState.QUEUED, seen)
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
        )

    def requeue(self, job_id: str, heartbeat: datetime | None, now: datetime) -> bool:
        """Put a running job whose worker stopped (last heartbeat ``heartbeat``) back in the
        queue, if nothing touched it since (compare-and-set on the heartbeat)."""
        seen = Job.heartbeat_at.is_(None) if heartbeat is None else Job.heartbeat_at == heartbeat
        return bool(
            self.session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobState.RUNNING, seen)
                .values(status=JobState.QUEUED, progress=0.0, enqueued_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
        )

    def stale_running(self, stale_before: datetime) -> list[tuple[str, datetime | None, int]]:
        """(id, last heartbeat, attempts) of running jobs whose worker has been silent since
        before ``stale_before``, oldest first."""
        rows = self.session.execute(
            select(Job.id, Job.heartbeat_at, Job.attempts)
            .where(
                Job.status == JobState.RUNNING,
                or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
            )
            .order_by(Job.created_at)
        )
        return [(job_id, beat, attempts) for job_id, beat, attempts in rows]

    def unsent_queued(self, sent_before: datetime) -> list[tuple[str, datetime | None]]:
        """(id, last sending) of queued jobs last sent to the broker before ``sent_before`` (or
        never), oldest first."""
        rows = self.session.execute(
            select(Job.id, Job.enqueued_at)
            .where(
                Job.status == JobState.QUEUED,
                or_(Job.enqueued_at.is_(None), Job.enqueued_at < sent_before),
            )
            .order_by(Job.created_at)
        )
        return [(job_id, sent) for job_id, sent in rows]

    def fail_unfinished_of(self, model_id: int, code: str, message: str) -> int:
        """Mark the queued and running jobs of model ``model_id`` failed with ``{"code",
        "message"}``; how many there were."""
        return (
            self.session.execute(
                update(Job)
                .where(Job.child_id == model_id, Job.status.in_(UNFINISHED))
                .values(
                    status=JobState.FAILED,
                    error={"code": code, "message": message},
                    finished_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            ).rowcount
            or 0
        )

    def release_child(self, model_id: int) -> None:
        """Every job of model ``model_id`` keeps its row, without the model (``child_id``
        NULL). The databases do it themselves (``ON DELETE SET NULL``); done here too, so
        nothing depends on SQLite's foreign keys being on in the deleting connection."""
        self.session.execute(
            update(Job)
            .where(Job.child_id == model_id)
            .values(child_id=None)
            .execution_options(synchronize_session=False)
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
