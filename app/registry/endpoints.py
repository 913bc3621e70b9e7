"""HTTP endpoints of the catalog: register parents, list models. (One model with its edges,
``GET /models/{name}``, is served by ``app.lineage.endpoints``; deleting one, which clears its
edges and jobs too, by ``app.detection.endpoints``.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.auth.deps import CuratorUploadDep
from app.core.deps import MetricsDep, ModelRequestDep, SessionDep, SettingsDep, model_request_body
from app.registry import service
from app.registry.schemas import (
    HubModelRequest,
    LimitQuery,
    ModelPage,
    OffsetQuery,
    ParentUpload,
    RegisteredModel,
    model_source,
)

router = APIRouter(tags=["catalog"])

ERRORS = {
    400: {"description": "Not a model: pickle file, corrupt or truncated safetensors, bad config"},
    401: {"description": "No API key, or an unknown or revoked one"},
    403: {"description": "The key's role is below curator"},
    409: {"description": "The name is already registered for other weights"},
    413: {"description": "Larger than MAX_MODEL_BYTES"},
    415: {"description": "Neither multipart/form-data nor JSON"},
    422: {"description": "Missing or invalid fields"},
    429: {"description": "The key used up its uploads for now (see Retry-After)"},
    # A hub ID while the hub cannot be reached (hub_offline) was answered but undocumented
    # (found by tests/test_schemathesis.py).
    503: {"description": "The hub cannot be reached (hub_offline); try again later"},
}


@router.post(
    "/parents",
    status_code=201,
    response_model=RegisteredModel,
    summary="Register a catalog parent",
    responses={200: {"description": "The same weights were already registered"}, **ERRORS},
    openapi_extra=model_request_body(ParentUpload, HubModelRequest),
)
def register_parent(
    caller: CuratorUploadDep,
    body: ModelRequestDep,
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    response: Response,
) -> dict:
    """Add a model to the catalog of candidate parents that new children are scored against.

    Multipart: `name` and the model's `files`. The weights are validated (safetensors only, the
    shapes against config.json) before anything is stored. The same weights twice answer 200
    with the existing record instead of a duplicate, never renamed: `created` is false and
    `notice` says under which name the weights are registered. Needs a curator key. JSON
    `{"hub_id", "revision"}` registers a Hugging Face hub model under its hub ID, pinned to the
    commit the revision resolves to.
    """
    fields = body.parse(ParentUpload, HubModelRequest)
    name = getattr(fields, "name", None)
    ingested = service.ingest(
        session,
        settings,
        model_source(fields, body.uploads()),
        name=name,
        candidate=True,
        caller=caller,
    )
    if ingested.created:
        metrics.models_registered.labels("parent").inc()
    else:
        response.status_code = 200
    return {
        **service.to_dict(ingested.model),
        "created": ingested.created,
        "notice": ingested.notice,
    }


@router.get("/models", response_model=ModelPage, summary="List models")
def get_models(
    session: SessionDep,
    q: Annotated[
        str | None, Query(max_length=300, description="Only names containing this text.")
    ] = None,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> dict:
    """Registered models, newest first, optionally filtered by a substring of the name."""
    models, total = service.list_models(session, q, limit, offset)
    return {
        "models": [service.to_dict(m) for m in models],
        "total": total,
        "limit": limit,
        "offset": offset,
    }
