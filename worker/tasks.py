"""The ``lineage.detect`` task: claim the job row, run the engine, write result and edge.

The database engine is made in each worker process when its first task runs, never at import,
and the task body is ``app.detection.service.run_job``, which is safe to run twice.
"""

from __future__ import annotations

from functools import lru_cache

from app.core.config import get_settings
from app.core.db import make_engine, session_factory
from app.detection.service import run_job
from worker.celery_app import DETECT_TASK, make_celery

celery = make_celery()


@lru_cache(maxsize=1)
def _factory():
    return session_factory(make_engine(get_settings().database_url))


@celery.task(name=DETECT_TASK)
def detect(job_id: str) -> None:
    """Run detection job ``job_id`` (its id is also this task's id)."""
    settings = get_settings()
    run_job(_factory(), job_id, device=settings.device, shortlist_size=settings.shortlist_size)
