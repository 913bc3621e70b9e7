"""The embedded mode's worker: one background thread in the serving process runs jobs one at a
time (``lineage serve`` with no ``REDIS_URL``). On start it picks up every job left ``queued`` or
``running`` by a previous process, so a restart loses nothing."""

from __future__ import annotations

import logging
import queue
import threading

from sqlalchemy.orm import Session, sessionmaker

from app.detection.service import DEFAULT_SHORTLIST, run_job, unfinished_job_ids

log = logging.getLogger(__name__)


class InProcessDispatcher:
    """A single worker thread inside this process, fed by a queue of job ids."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        device: str = "cpu",
        shortlist_size: int = DEFAULT_SHORTLIST,
    ):
        self.factory, self.device, self.shortlist_size = factory, device, shortlist_size
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="lineage-worker", daemon=True)
        self._thread.start()
        with factory() as session:
            unfinished = unfinished_job_ids(session)
        for job_id in unfinished:
            self.enqueue(job_id)

    def enqueue(self, job_id: str) -> None:
        """Queue job ``job_id`` for the thread."""
        self._queue.put(job_id)

    def join(self) -> None:
        """Block until every enqueued job has been run."""
        self._queue.join()

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                run_job(
                    self.factory, job_id, device=self.device, shortlist_size=self.shortlist_size
                )
            except Exception:  # a bug, not bad input: log it and keep serving
                log.exception("job %s crashed the in-process worker", job_id)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def close(self) -> None:
        """Let the thread finish the job in hand and stop."""
        self._queue.put(None)
        self._thread.join(timeout=5)
