"""HTTP endpoints of the catalog: register parents, list and show models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import (
    MetricsDep,
    ModelRequestDep,
    SessionDep,
    SettingsDep,
    model_request_body,
    validate_body,
)
from app.lineage.repository import LineageRepository
from app.registry import service
from app.registry.schemas import (
    HubModelRequest,
    ModelDetail,
    ModelPage,
    ParentUpload,
    RegisteredModel,
)
from app.registry.storage import store_hub_model

router = APIRouter(tags=["catalog"])

ERRORS = {
    400: {"description": "Not a model: pickle file, corrupt or truncated safetensors, bad config"},
    409: {"description": "The name is already registered for other weights"},
    413: {"description": "Larger than MAX_MODEL_BYTES"},
    415: {"description": "Neither multipart/form-data nor JSON"},
    422: {"description": "Missing or invalid fields"},
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
    body: ModelRequestDep,
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    response: Response,
) -> dict:
    """Add a model to the catalog of candidate parents that new children are scored against.

    Multipart: `name` and the model's `files`. The weights are validated (safetensors only, the
    shapes against config.json) before anything is stored. The same weights twice answer 200
    with the existing record instead of a duplicate. JSON `{"hub_id", "revision"}` registers a
    Hugging Face hub model under its hub ID, pinned to the commit the revision resolves to.
    """
    if body.is_json:
        request = validate_body(HubModelRequest, body.json)
        hub, folder, loaded, fresh = store_hub_model(settings, request.hub_id, request.revision)
        record, created = service.register_stored(
            session,
            loaded,
            folder,
            fresh,
            hub.hub_id,
            candidate=True,
            hub_id=hub.hub_id,
            revision=hub.revision,
        )
    else:
        fields = body.form(ParentUpload)
        folder, loaded, fresh, _ = body.store(settings)
        record, created = service.register_stored(
            session, loaded, folder, fresh, fields.name, candidate=True
        )
    if created:
        metrics.models_registered.labels("parent").inc()
    else:
        response.status_code = 200
    return {**service.to_dict(record), "created": created}


@router.get("/models", response_model=ModelPage, summary="List models")
def get_models(
    session: SessionDep,
    q: Annotated[
        str | None, Query(max_length=300, description="Only names containing this text.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict:
    """Registered models, newest first, optionally filtered by a substring of the name."""
    models, total = service.list_models(session, q, limit, offset)
    return {
        "models": [service.to_dict(m) for m in models],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


@router.get(
    "/models/{name:path}",
    response_model=ModelDetail,
    summary="Show a model",
    responses={404: {"description": "No model has that name"}},
)
def get_model(name: str, session: SessionDep) -> dict:
    """A model's record with the edges into it and its children's names (`name` may contain
    `/`, e.g. `GET /models/org/name`)."""
    model = service.get_by_name(session, name)
    repository = LineageRepository(session)
    parents = {r.model.id: r.model.name for r in repository.ancestors(model.id, max_depth=1)}
    children = repository.descendants(model.id, max_depth=1)
    return {
        **service.to_dict(model),
        "parents": [
            {
                "parent": parents[edge.parent_id],
                "score": edge.score,
                "method": edge.method,
                "relation": edge.relation,
                "declared": edge.declared,
            }
            for edge in repository.parents_of(model.id)
        ],
        "children": [r.model.name for r in children],
    }
