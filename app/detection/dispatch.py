"""Getting a queued job to a worker, after its transaction has committed.

- ``InProcessDispatcher``: the embedded mode. One background thread in the serving process runs
  jobs one at a time (``lineage serve`` with no ``REDIS_URL``). On start it picks up every job
  left ``queued`` or ``running`` by a previous process, so a restart loses nothing.
- ``CeleryDispatcher``: production. ``send_task`` to the Redis broker with the job id as the task
  id; ``lineage worker`` processes run it (``worker/``).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.detection.models import Job
from app.detection.service import run_job

log = logging.getLogger(__name__)
DETECT_TASK = "lineage.detect"


class Dispatcher(Protocol):
    """Where committed jobs go."""

    def enqueue(self, job_id: str) -> None: ...

    def close(self) -> None: ...


class InProcessDispatcher:
    """A single worker thread inside this process, fed by a queue of job ids."""

    def __init__(self, factory: sessionmaker[Session], device: str = "cpu"):
        self.factory, self.device = factory, device
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="lineage-worker", daemon=True)
        self._thread.start()
        with factory() as session:
            unfinished = session.scalars(
                select(Job.id).where(Job.status.in_(("queued", "running"))).order_by(Job.created_at)
            ).all()
        for job_id in unfinished:
            self.enqueue(job_id)

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def join(self) -> None:
        """Block until every enqueued job has been run."""
        self._queue.join()

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                run_job(self.factory, job_id, device=self.device)
            except Exception:  # a bug, not bad input: log it and keep serving
                log.exception("job %s crashed the in-process worker", job_id)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


class CeleryDispatcher:
    """Send each job to the Celery workers through Redis; the task id is the job id."""

    def __init__(self, redis_url: str):
        from worker.celery_app import make_celery

        self.celery = make_celery(redis_url)

    def enqueue(self, job_id: str) -> None:
        self.celery.send_task(DETECT_TASK, args=[job_id], task_id=job_id)

    def close(self) -> None:
        pass
