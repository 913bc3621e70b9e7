"""Errors of detection jobs, raised where the fault is found."""

from __future__ import annotations

from app.engine.errors import LineageError


class UnknownJob(LineageError):
    """No detection job has that id."""

    code = "unknown_job"
    status = 404


class QueueUnavailable(LineageError):
    """A job was stored but could not be handed to the workers (the broker is down)."""

    code = "queue_unavailable"
    status = 503
