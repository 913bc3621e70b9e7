"""Errors of detection jobs, raised where the fault is found."""

from __future__ import annotations

from app.engine.errors import LineageError


class UnknownJob(LineageError):
    """No detection job has that id."""

    code = "unknown_job"
