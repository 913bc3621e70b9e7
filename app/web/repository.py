"""The SQL the pages need beyond the domains' own services: recent jobs, each model's latest
finished job (reads only)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.detection.models import Job
from app.registry.models import Model


def recent_jobs(session: Session, limit: int = 20) -> list[tuple[Job, str | None]]:
    """The ``limit`` newest jobs with their child's name (None if the model was deleted)."""
    rows = session.execute(
        select(Job, Model.name)
        .outerjoin(Model, Model.id == Job.child_id)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
    )
    return [(job, name) for job, name in rows]


def latest_results(session: Session, model_ids: Iterable[int]) -> dict[int, dict]:
    """The result of each model's newest succeeded job, by model id (models without one are
    absent)."""
    ids = list(set(model_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(Job.child_id, Job.result)
        .where(Job.child_id.in_(ids), Job.status == "succeeded")
        .order_by(Job.child_id, Job.created_at.desc(), Job.finished_at.desc())
    )
    latest: dict[int, dict] = {}
    for child_id, result in rows:
        if child_id not in latest and isinstance(result, dict):
            latest[child_id] = result
    return latest
