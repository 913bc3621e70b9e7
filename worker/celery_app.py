"""The Celery application: configured for long GPU tasks on a Redis broker.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only when it has
  finished, so a worker that dies mid-run leaves its message to be delivered again;
- ``worker_prefetch_multiplier = 1``: a worker holds one job at a time, never a backlog;
- the Redis ``visibility_timeout`` (how long an unacknowledged message waits before another
  worker may take it) sits above the hard time limit of a task, so a slow job is never run
  twice while it is still running;
- no result backend: results live in the job rows.
"""

from __future__ import annotations

from celery import Celery

from app.core.config import get_settings

# The one task: run detection job <id>; the task id is the job id.
DETECT_TASK = "lineage.detect"


def make_celery(redis_url: str | None = None) -> Celery:
    """A Celery app on ``redis_url`` (default: ``REDIS_URL``) with the settings above."""
    settings = get_settings()
    broker = redis_url or settings.redis_url
    if not broker:
        raise RuntimeError("REDIS_URL is not set: the Celery worker needs a Redis broker")
    celery = Celery("lineage", broker=broker)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 30),
        broker_transport_options={
            "visibility_timeout": settings.task_visibility_timeout,
            # Sweep for messages of dead workers every few seconds (one cheap sorted-set query),
            # rather than kombu's default of about 100 s, so their jobs restart promptly once
            # the visibility timeout has passed.
            "unacked_restore_interval": max(1, min(10, settings.task_visibility_timeout // 2)),
            "unacked_restore_throttle": 1,
        },
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        include=["worker.tasks"],
    )
    return celery
