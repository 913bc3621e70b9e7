"""The port through which committed jobs reach a worker. The implementations are processes'
business and live in ``worker/`` (the in-process thread of the embedded mode, Celery through
Redis); ``lineage serve`` and the tests inject one into ``create_app``."""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    """Where committed jobs go."""

    def enqueue(self, job_id: str) -> None:
        """Hand job ``job_id`` (its row already committed) to a worker."""
        ...

    def close(self) -> None:
        """Stop taking jobs (at shutdown)."""
        ...
