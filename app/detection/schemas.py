"""Pydantic shapes of detection's HTTP interface: ``POST /detect`` and ``GET /jobs/{id}``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.engine.methods import AUTO
from app.registry.schemas import HubModelRequest, ModelName


class DetectUpload(BaseModel):
    """The text fields of a multipart ``POST /detect`` (the child's files come in ``files``)."""

    model_config = ConfigDict(extra="forbid")

    name: ModelName | None = Field(
        None, description="The child's name; default `upload-<first 12 hex of its SHA-256>`."
    )
    register_as_parent: bool = Field(
        False, description="After detection, add the child to the catalog of candidate parents."
    )
    method: str = Field(AUTO, description="Scoring method (see `lineage detect --help`).")


class HubDetectRequest(HubModelRequest):
    """A child named by its hub ID instead of uploaded."""

    register_as_parent: bool = False
    method: str = AUTO


class JobAccepted(BaseModel):
    """``POST /detect``'s answer; poll ``GET /jobs/{job_id}`` (also the ``Location`` header)."""

    job_id: str
    child: str = Field(description="The child's name: the existing record's for known weights.")
    created: bool = Field(description="False when the child's weights were already registered.")
    notice: str | None = Field(
        None,
        description="When the weights were already registered: under which name, and whether "
        "this job may add edges to that model (only its owner or a curator may).",
    )


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str


class JobStatus(BaseModel):
    """A detection job: its status, progress, and when it succeeded, its result."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(description="From 0 to 1.")
    child: str | None = Field(description="The child model's name.")
    attempts: int = Field(
        description="How many times a worker claimed the job (more than 1: a worker stopped "
        "mid-run and another took it over)."
    )
    verdict: str | None = Field(
        None,
        description="Audit verdict once succeeded: consistent, undisclosed, mismatch, "
        "unverified or no_parent (details in result.audit).",
    )
    error: JobError | None
    result: dict[str, Any] | None = Field(
        description=(
            "The ranking: `decision` (parent or null, confidence, method, margin), `candidates` "
            "best first with per-method `scores`, and `skipped` candidates with the reason."
        )
    )
    created_at: str | None
    started_at: str | None
    heartbeat_at: str | None = Field(
        None,
        description="The last sign of life of the worker running it (every "
        "JOB_HEARTBEAT_INTERVAL seconds); a job silent for JOB_STALE_AFTER is queued again.",
    )
    finished_at: str | None
