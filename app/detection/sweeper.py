"""The sweeper: what makes sure no job is lost and no failed upload leaves files behind.

A job can be left unfinished by a fault outside it: its message lost or never sent (the API died
between committing the job and handing it to the broker, the broker restarted), or its worker
killed mid-run (``kill -9``, the OOM killer, a machine gone). The database knows: a queued job's
``enqueued_at`` says when it was last sent, and a running job's ``heartbeat_at`` when its worker
last showed it was alive (``service.Heartbeat``). One ``sweep``:

- puts back in the queue every running job whose heartbeat is older than ``JOB_STALE_AFTER``,
  unless it has been claimed ``JOB_MAX_ATTEMPTS`` times already: a job that keeps killing its
  workers (out of memory, say) is failed with ``worker_lost`` instead of tried for ever;
- sends again every queued job last sent more than ``JOB_RESEND_AFTER`` ago;
- removes staging folders and unreferenced stored folders older than ``STAGING_MAX_AGE``.

Each decision is a compare-and-set on the row, so sweepers in several workers and API processes
never send a job twice in one round; a duplicate message is harmless anyway (``claim`` lets only
one worker hold a job). It runs in every worker (``worker.tasks`` starts a thread in each Celery
worker; the embedded worker sweeps between jobs) and once when the API starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import DATABASE_UNAVAILABLE, transaction, utcnow
from app.detection.repository import JobRepository
from app.detection.service import mark_failed
from app.registry import service as registry

log = logging.getLogger(__name__)


@dataclass
class Swept:
    """What one sweep did: jobs put back in the queue (their worker stopped), jobs sent again
    (queued, never taken), jobs failed (their workers stopped too often), folders removed."""

    requeued: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.resent or self.failed or self.removed)


def sweep(
    factory: sessionmaker[Session],
    enqueue: Callable[[str], None],
    settings: Settings,
    *,
    resend_after: float | None = None,
    stale_after: float | None = None,
) -> Swept:
    """One sweep (see the module's docstring); ``enqueue`` hands a job id to the workers.
    ``resend_after`` and ``stale_after`` override the settings' (0: every queued job, every
    running job: what a process that knows it is the only worker does at start)."""
    resend_after = settings.job_resend_after if resend_after is None else resend_after
    stale_after = settings.job_stale_after if stale_after is None else stale_after
    swept = Swept()
    now = utcnow()
    with transaction(factory) as session:
        jobs = JobRepository(session)
        for job_id, heartbeat, attempts in jobs.stale_running(now - timedelta(seconds=stale_after)):
            if attempts >= settings.job_max_attempts:
                mark_failed(
                    session,
                    job_id,
                    "worker_lost",
                    f"the job's worker stopped before finishing it {attempts} times (killed, "
                    "out of memory or crashed); it is not tried again",
                )
                swept.failed.append(job_id)
            elif jobs.requeue(job_id, heartbeat, now):
                swept.requeued.append(job_id)
        for job_id, sent in jobs.unsent_queued(now - timedelta(seconds=resend_after)):
            if jobs.mark_sent(job_id, sent, now):
                swept.resent.append(job_id)
    for job_id in swept.requeued + swept.resent:  # committed: a worker finds the row queued
        try:
            enqueue(job_id)
        except Exception as exc:  # the broker is away: the next sweep after resend_after tries
            log.warning("sweeper could not send job %s: %s", job_id, exc)
    swept.removed = registry.remove_stale_files(factory, settings)
    if swept:
        log.info(
            "sweep: %d requeued, %d sent again, %d failed (worker lost), %d folders removed",
            len(swept.requeued),
            len(swept.resent),
            len(swept.failed),
            len(swept.removed),
        )
    return swept


def sweep_quietly(
    factory: sessionmaker[Session], enqueue: Callable[[str], None], settings: Settings, **kwargs
) -> Swept | None:
    """``sweep``, logging instead of raising when the database is away (the next one will do)
    or anything else goes wrong: a periodic sweeper must outlive a fault."""
    try:
        return sweep(factory, enqueue, settings, **kwargs)
    except DATABASE_UNAVAILABLE as exc:
        log.warning("sweep skipped, the database is away: %s", type(exc).__name__)
    except Exception:
        log.exception("sweep failed")
    return None
