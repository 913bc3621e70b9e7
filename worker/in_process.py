"""The embedded mode's worker: one background thread in the serving process runs jobs one at a
time (``lineage serve`` with no ``REDIS_URL``).

It is the only worker of its database, so on start every job left ``queued`` or ``running`` by a
previous process is queued again at once; between jobs, and at least every ``SWEEP_INTERVAL``
seconds, it sweeps (``app.detection.sweeper``) like any worker. A job whose database write fails
(SQLite busy past its timeout, say) is tried again with backoff under the same claim."""

from __future__ import annotations

import logging
import queue
import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import DATABASE_UNAVAILABLE
from app.detection.service import (
    DATABASE_RETRIES,
    new_claim_token,
    retry_delay,
    run_job_as_configured,
)
from app.detection.sweeper import sweep_quietly

log = logging.getLogger(__name__)


class InProcessDispatcher:
    """A single worker thread inside this process, fed by a queue of jobs: (id, claim token of
    a retry or None, tries so far)."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings):
        self.factory = factory
        self.settings = settings
        self._queue: queue.Queue[tuple[str, str | None, int] | None] = queue.Queue()
        self._timers: list[threading.Timer] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name="lineage-worker", daemon=True)
        # Nothing else runs this database's jobs: what a previous process left is queued now.
        sweep_quietly(self.factory, self.enqueue, self.settings, resend_after=0, stale_after=0)
        self._thread.start()

    def enqueue(self, job_id: str) -> None:
        """Queue job ``job_id`` for the thread."""
        self._queue.put((job_id, None, 0))

    def join(self) -> None:
        """Block until every enqueued job has been run."""
        self._queue.join()

    def _work(self) -> None:
        interval = self.settings.sweep_interval
        last_sweep = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=interval)
            except queue.Empty:
                item = ()
            if time.monotonic() - last_sweep >= interval:
                sweep_quietly(self.factory, self.enqueue, self.settings)
                last_sweep = time.monotonic()
            if item is None:
                self._queue.task_done()
                return
            if item:
                try:
                    self._run(*item)
                finally:
                    self._queue.task_done()

    def _run(self, job_id: str, token: str | None, tries: int) -> None:
        token = token or new_claim_token()
        try:
            run_job_as_configured(self.settings, self.factory, job_id, token)
        except DATABASE_UNAVAILABLE as exc:
            if tries + 1 >= DATABASE_RETRIES or self._closed.is_set():
                log.warning("job %s: database away, left to the sweeper (%s)", job_id, exc)
                return
            delay = retry_delay(tries)
            log.warning("job %s: database away, trying again in %d s", job_id, delay)
            retry = (job_id, token, tries + 1)
            timer = threading.Timer(delay, self._queue.put, args=(retry,))
            timer.daemon = True
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
            timer.start()
        except Exception:  # a bug, not bad input: log it and keep serving
            log.exception("job %s crashed the in-process worker", job_id)

    def close(self) -> None:
        """Let the thread finish the job in hand and stop."""
        self._closed.set()
        for timer in self._timers:
            timer.cancel()
        self._queue.put(None)
        self._thread.join(timeout=5)
