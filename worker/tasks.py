"""The ``lineage.detect`` task: claim the job row, run the engine, write result and edge; and
what runs beside it in every Celery worker.

- The database engine is made in each pool process when its first task runs, never at import,
  and the task body is ``app.detection.service.run_job``, which is safe to run twice.
- A database fault while claiming or recording is retried with exponential backoff under the
  same claim (``self.retry``: a new message is sent before this one is acknowledged), never
  acknowledged as done. Past ``DATABASE_RETRIES`` the job is left to the sweeper.
- Each worker's main process runs the sweeper (``app.detection.sweeper``) on a thread: at start
  and every ``SWEEP_INTERVAL`` seconds.
- Each pool process gets ``WORKER_MEMORY_LIMIT`` as its heap limit (``RLIMIT_DATA``), so a job
  that needs more fails cleanly with ``memory_limit`` instead of waking the OOM killer.
"""

from __future__ import annotations

import logging
import resource
import threading
from functools import lru_cache

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app.core.config import get_settings
from app.core.db import DATABASE_UNAVAILABLE, make_engine, session_factory
from app.detection.service import (
    DATABASE_RETRIES,
    new_claim_token,
    retry_delay,
    run_job_as_configured,
)
from app.detection.sweeper import sweep_quietly
from worker.celery_app import DETECT_TASK, make_celery

log = logging.getLogger(__name__)

celery = make_celery()


@lru_cache(maxsize=1)
def _factory():
    return session_factory(make_engine(get_settings().database_url))


@celery.task(name=DETECT_TASK, bind=True, max_retries=DATABASE_RETRIES)
def detect(self, job_id: str, token: str | None = None) -> None:
    """Run detection job ``job_id`` (its id is also this task's id); ``token``: the claim of a
    retried delivery."""
    token = token or new_claim_token()
    try:
        run_job_as_configured(get_settings(), _factory(), job_id, token)
    except DATABASE_UNAVAILABLE as exc:
        if self.request.retries >= DATABASE_RETRIES:
            log.warning(
                "job %s: database away after %d tries; left to the sweeper",
                job_id,
                1 + DATABASE_RETRIES,
            )
            return
        countdown = retry_delay(self.request.retries)
        log.warning(
            "job %s: database away (%s); retry in %d s", job_id, type(exc).__name__, countdown
        )
        raise self.retry(args=[job_id, token], countdown=countdown) from None


@worker_process_init.connect
def _limit_memory(**_kwargs) -> None:
    limit = get_settings().worker_memory_limit
    if limit:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


class _Sweeper:
    """The sweeper's thread in a worker's main process, with an engine and a broker connection
    of its own (never shared with the pool processes)."""

    def __init__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lineage-sweeper", daemon=True)

    def _run(self) -> None:
        from worker.dispatch import CeleryDispatcher

        settings = get_settings()
        engine = make_engine(settings.database_url)
        factory = session_factory(engine)
        sender = CeleryDispatcher(settings.redis_url)
        try:
            while True:
                sweep_quietly(factory, sender.enqueue, settings)
                if self.stop.wait(settings.sweep_interval):
                    return
        finally:
            engine.dispose()


_sweeper = _Sweeper()


@worker_ready.connect
def _start_sweeper(**_kwargs) -> None:
    _sweeper.thread.start()


@worker_shutdown.connect
def _stop_sweeper(**_kwargs) -> None:
    _sweeper.stop.set()
