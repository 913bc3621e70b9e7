"""HTTP endpoints of detection: submit a child (``POST /detect``), follow its job."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from app.api.deps import (
    DispatcherDep,
    MetricsDep,
    ModelRequestDep,
    SessionDep,
    SettingsDep,
    model_request_body,
    validate_body,
)
from app.api.errors import QueueUnavailable
from app.core.db import utcnow
from app.detection import service
from app.detection.audit import VERDICTS
from app.detection.errors import UnknownJob
from app.detection.models import Job
from app.detection.schemas import (
    DetectUpload,
    HubDetectRequest,
    JobAccepted,
    JobStatus,
)
from app.engine.errors import UnknownMethod
from app.engine.methods import method_names
from app.hub.declared import declared_parents
from app.registry.models import Model
from app.registry.service import register_stored
from app.registry.storage import store_hub_model

log = logging.getLogger(__name__)
router = APIRouter(tags=["detection"])


@router.post(
    "/detect",
    status_code=202,
    response_model=JobAccepted,
    summary="Find a child model's parent",
    responses={
        400: {"description": "Not a model, or an unknown method"},
        409: {"description": "The name is already registered for other weights"},
        413: {"description": "Larger than MAX_MODEL_BYTES"},
        415: {"description": "Neither multipart/form-data nor JSON"},
        422: {"description": "Missing or invalid fields"},
        503: {"description": "The job was stored but the workers cannot be reached"},
    },
    openapi_extra=model_request_body(DetectUpload, HubDetectRequest),
)
def detect(
    body: ModelRequestDep,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    metrics: MetricsDep,
    response: Response,
) -> dict:
    """Queue a detection job for an uploaded child: which catalog model is its parent?

    Multipart: the child's `files`, optional `name`, `method` (default `auto`) and
    `register_as_parent` (after detection, the child joins the catalog of candidate parents).
    Answers 202 with the job id; follow it at `GET /jobs/{job_id}` (the `Location` header).
    JSON `{"hub_id", "revision", "method", "register_as_parent"}` names a hub model instead.
    """
    fields = validate_body(HubDetectRequest, body.json) if body.is_json else body.form(DetectUpload)
    # Checked before anything is stored: a typo must not leave a model behind.
    if fields.method not in method_names():
        raise UnknownMethod(
            f"unknown method {fields.method!r}; choose one of: {', '.join(method_names())}"
        )
    hub_id = revision = None
    if body.is_json:
        hub, folder, loaded, fresh = store_hub_model(settings, fields.hub_id, fields.revision)
        name, hub_id, revision = hub.hub_id, hub.hub_id, hub.revision
        declared = declared_parents(hub.folder)
    else:
        folder, loaded, fresh, declared = body.store(settings)
        name = fields.name or f"upload-{loaded.sha256[:12]}"
    # Not a candidate yet: the job makes it one after detection when register_as_parent, so it is
    # never scored against itself or offered as a parent before its own lineage is known.
    child, created = register_stored(
        session, loaded, folder, fresh, name, candidate=False, hub_id=hub_id, revision=revision
    )
    job = service.create_job(
        session,
        child,
        {
            "method": fields.method,
            "register_as_parent": fields.register_as_parent,
            "declared": [d.to_dict() for d in declared],
        },
    )
    # Commit before enqueueing, so a worker never looks for a row that is not there yet.
    session.commit()
    if created:
        metrics.models_registered.labels("child").inc()
    metrics.jobs_created.inc()
    try:
        dispatcher.enqueue(job.id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job.id)
        job.status, job.finished_at = "failed", utcnow()
        job.error = {"code": QueueUnavailable.code, "message": "the job could not be queued"}
        session.commit()
        raise QueueUnavailable(
            f"job {job.id} was stored but the workers cannot be reached ({type(exc).__name__}); "
            "try again later"
        ) from None
    response.headers["Location"] = f"/jobs/{job.id}"
    return {"job_id": job.id}


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="A detection job's status and result",
    responses={404: {"description": "No job has that id"}},
)
def get_job(job_id: str, session: SessionDep) -> dict:
    """Status (queued, running, succeeded, failed), progress, error, and once succeeded the
    result: the decision and the candidates ranked best first with per-method scores."""
    job = session.get(Job, job_id)
    if job is None:
        raise UnknownJob(f"no job with id {job_id!r}")
    child = session.get(Model, job.child_id) if job.child_id is not None else None
    return service.to_dict(job, child.name if child is not None else None)


@router.get("/audit", summary="Detections by audit verdict (the operator's review queue)")
def get_audit(
    session: SessionDep,
    verdict: Annotated[
        Literal[VERDICTS],
        Query(description="Which verdict to list, e.g. undisclosed or mismatch."),
    ],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict:
    """Finished detections with this audit verdict, newest first: the child, the parent
    inferred from its weights, the parents its files declare (and whether each is in the
    catalog), and the confidence."""
    return {
        "verdict": verdict,
        "jobs": service.audit_list(session, verdict, limit, offset),
        "limit": limit,
        "offset": offset,
    }
