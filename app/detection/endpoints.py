"""HTTP endpoints of detection: submit a child (``POST /detect``), follow its job, and list
detections by audit verdict."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from app.auth.deps import AdminDep, SubmitterDep
from app.core.deps import MetricsDep, ModelRequestDep, SessionDep, SettingsDep, model_request_body
from app.detection import service
from app.detection.audit import VERDICTS
from app.detection.dispatch import Dispatcher
from app.detection.schemas import DetectUpload, HubDetectRequest, JobAccepted, JobStatus
from app.lineage import service as lineage
from app.registry.schemas import DeletedModel, LimitQuery, OffsetQuery, model_source

router = APIRouter(tags=["detection"])


def get_dispatcher(request: Request) -> Dispatcher:
    """Where committed jobs are sent (injected into ``create_app``)."""
    return request.app.state.dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


@router.post(
    "/detect",
    status_code=202,
    response_model=JobAccepted,
    summary="Find a child model's parent",
    responses={
        400: {"description": "Not a model, or an unknown method"},
        401: {"description": "No API key, or an unknown or revoked one"},
        403: {"description": "The key is a reader, or register_as_parent without curator"},
        409: {"description": "The name is already registered for other weights"},
        413: {"description": "Larger than MAX_MODEL_BYTES"},
        415: {"description": "Neither multipart/form-data nor JSON"},
        422: {"description": "Missing or invalid fields"},
        429: {"description": "The key used up its uploads or jobs for now (see Retry-After)"},
        503: {
            "description": "The hub cannot be reached (hub_offline), or the job was stored but "
            "the workers cannot be reached"
        },
    },
    openapi_extra=model_request_body(DetectUpload, HubDetectRequest),
)
def detect(
    caller: SubmitterDep,
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

    Needs a submitter key; `register_as_parent` needs a curator key. Weights already registered
    are the existing record, never renamed (`notice` says so); when that record belongs to
    another key, the job reports its finding but writes no edge to it (unless curator).
    """
    fields = body.parse(DetectUpload, HubDetectRequest)
    submitted = service.submit(
        session,
        settings,
        dispatcher,
        model_source(fields, body.uploads()),
        name=getattr(fields, "name", None),
        method=fields.method,
        register_as_parent=fields.register_as_parent,
        caller=caller,
    )
    if submitted.child_created:
        metrics.models_registered.labels("child").inc()
    metrics.jobs_created.inc()
    response.headers["Location"] = f"/jobs/{submitted.job.id}"
    return {
        "job_id": submitted.job.id,
        "child": submitted.child_name,
        "created": submitted.child_created,
        "notice": submitted.notice,
    }


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="A detection job's status and result",
    responses={404: {"description": "No job has that id"}},
)
def get_job(job_id: str, session: SessionDep) -> dict:
    """Status (queued, running, succeeded, failed), progress, error, and once succeeded the
    result: the decision and the candidates ranked best first with per-method scores."""
    return service.get_job(session, job_id)


@router.get("/audit", summary="Detections by audit verdict (the operator's review queue)")
def get_audit(
    session: SessionDep,
    verdict: Annotated[
        Literal[(*VERDICTS, "conflict")],
        Query(
            description="Which verdict to list, e.g. undisclosed or mismatch; `conflict`: the "
            "edges detection found but the graph refused (they would close a cycle)."
        ),
    ],
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> dict:
    """Finished detections with this audit verdict, newest first: the child, the parent
    inferred from its weights, the parents its files declare (and whether each is in the
    catalog), and the confidence. `verdict=conflict` lists instead, under `conflicts`, the edges
    that detections found and the graph refused because they would close a cycle (parent,
    child, job, why), newest first, for a curator to resolve (`DELETE /edges`, `POST /edges`)."""
    if verdict == "conflict":
        return {
            "verdict": verdict,
            "jobs": [],
            "conflicts": lineage.graph_log(session, "conflict", limit, offset),
            "limit": limit,
            "offset": offset,
        }
    return {
        "verdict": verdict,
        "jobs": service.audit_list(session, verdict, limit, offset),
        "limit": limit,
        "offset": offset,
    }


@router.delete(
    "/models/{name:path}",
    response_model=DeletedModel,
    summary="Delete a model (admin)",
    responses={
        401: {"description": "No API key, or an unknown or revoked one"},
        403: {"description": "The key is not an admin key"},
        404: {"description": "No model has that name"},
    },
)
def delete_model(caller: AdminDep, name: str, session: SessionDep) -> dict:
    """Delete a model (`name` may contain `/`, e.g. `DELETE /models/org/name`) in one
    transaction: its edges go, each kept in the graph's log (`GET /graph/log`, `edge_deleted`
    with this key and the reason "model deleted"); its queued or running jobs fail with
    `unknown_model`, and every job keeps its row (without the model); its stored files are
    removed once the deletion has committed. Needs an admin key."""
    return service.delete_model(session, name, key_id=caller.id)
