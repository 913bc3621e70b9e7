"""Dispatchers, the implementations of ``app.detection.dispatch.Dispatcher``, and the choice
between them that ``lineage serve`` injects into ``create_app``:

- without ``REDIS_URL``, ``InProcessDispatcher`` (``worker.in_process``): the embedded mode;
- with it, ``CeleryDispatcher``: ``send_task`` to the Redis broker with the job id as the task
  id; ``lineage worker`` processes run it (``worker.tasks``).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.detection.dispatch import Dispatcher
from worker.celery_app import DETECT_TASK, make_celery
from worker.in_process import InProcessDispatcher


class CeleryDispatcher:
    """Send each job to the Celery workers through Redis; the task id is the job id."""

    def __init__(self, redis_url: str):
        self.celery = make_celery(redis_url)

    def enqueue(self, job_id: str) -> None:
        """Send the detection task of ``job_id`` to the broker."""
        self.celery.send_task(DETECT_TASK, args=[job_id], task_id=job_id)

    def close(self) -> None:
        """Nothing to stop: the broker keeps what was sent."""


def dispatcher_for(settings: Settings) -> Callable[[sessionmaker[Session]], Dispatcher]:
    """The dispatcher ``settings`` ask for, as ``create_app`` takes it: a function of the app's
    session factory (the in-process worker shares it; Celery needs only the broker)."""
    if settings.redis_url is None:
        return lambda factory: InProcessDispatcher(factory, settings)
    redis_url = settings.redis_url
    return lambda _factory: CeleryDispatcher(redis_url)
