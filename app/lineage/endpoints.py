"""HTTP endpoints of the lineage graph: a model's family tree as JSON, and a model with its
direct family. (Browsers asking for ``/lineage/{name}`` get the drawn page, served by
``app.web.endpoints``, whose route matches only requests that prefer HTML.)

``GET /models/{name}`` lives here rather than in the catalog because it joins a record with its
edges, and the graph sits above the catalog."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response

from app.auth.deps import require
from app.auth.service import Caller, Role
from app.core.deps import SessionDep, SettingsDep
from app.lineage import service
from app.lineage.schemas import (
    DEFAULT_DEPTH,
    DEFAULT_WIDTH,
    DepthQuery,
    EdgeRequest,
    FamilyTree,
    GraphEventOut,
    LineageEdge,
    WidthQuery,
)
from app.registry.schemas import LimitQuery, ModelDetail, OffsetQuery

router = APIRouter()


@router.get(
    "/models/{name:path}",
    response_model=ModelDetail,
    tags=["catalog"],
    summary="Show a model",
    responses={404: {"description": "No model has that name"}},
)
def get_model(name: str, session: SessionDep) -> dict:
    """A model's record with the edges into it and its children's names (`name` may contain
    `/`, e.g. `GET /models/org/name`)."""
    return service.model_detail(session, name)


@router.get(
    "/lineage/{name:path}",
    response_model=FamilyTree,
    tags=["lineage"],
    summary="A model's family tree",
    responses={
        200: {
            "description": "The family tree: JSON, or an HTML page when `Accept` asks for "
            "`text/html` (browsers)",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        404: {"description": "No model has that name"},
    },
)
def get_lineage(
    name: str,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    depth: DepthQuery = DEFAULT_DEPTH,
    width: WidthQuery = DEFAULT_WIDTH,
) -> dict:
    """Ancestors and descendants of a model (up to `MAX_LINEAGE_DEPTH` edges away) and the edges
    among them, each with its score, method and whether it was declared. `name` may contain `/`.

    A request whose `Accept` header prefers `text/html` (a browser) gets the family-tree page
    instead: the tree drawn `depth` generations up and down, `width` models a level.
    """
    # Caches must keep the two representations of this URL apart.
    response.headers["Vary"] = "Accept"
    return service.family_tree(session, name, settings.max_lineage_depth)


CuratorDep = Annotated[Caller, Depends(require(Role.CURATOR))]
NameQuery = Annotated[str, Query(min_length=1, max_length=300)]
ReasonQuery = Annotated[
    str, Query(min_length=1, max_length=500, description="Why: kept in the graph's log.")
]
EDGE_ERRORS = {
    401: {"description": "No API key, or an unknown or revoked one"},
    403: {"description": "The key's role is below curator"},
    404: {"description": "No model, or no edge, has those names"},
}


class EdgeOut(LineageEdge):
    """An edge with its evidence (who or what made it)."""

    evidence: dict | None = None


@router.delete(
    "/edges",
    response_model=EdgeOut,
    tags=["lineage"],
    summary="Delete an edge (curator)",
    responses=EDGE_ERRORS,
)
def delete_edge(
    caller: CuratorDep,
    session: SessionDep,
    parent: NameQuery,
    child: NameQuery,
    reason: ReasonQuery,
) -> dict:
    """Remove the edge `parent` → `child` (names as query parameters: they may contain `/`).
    The deletion is kept in the graph's log (`GET /graph/log`) with the edge as it was, the key
    and the reason. Needs a curator key."""
    return service.delete_edge(session, parent, child, key_id=caller.id, reason=reason)


@router.post(
    "/edges",
    status_code=201,
    response_model=EdgeOut,
    tags=["lineage"],
    summary="State an edge (curator)",
    responses={**EDGE_ERRORS, 409: {"description": "The edge would close a cycle"}},
)
def set_edge(caller: CuratorDep, body: EdgeRequest, session: SessionDep) -> dict:
    """Write `parent` → `child` as a curator's statement (a declared edge whose evidence names
    the curator's key and reason), or make the existing edge of that pair one; a cycle is a 409.
    Logged in `GET /graph/log`. Needs a curator key."""
    return service.set_edge(
        session,
        body.parent,
        body.child,
        relation=body.relation,
        key_id=caller.id,
        reason=body.reason,
    )


@router.get(
    "/graph/log",
    response_model=list[GraphEventOut],
    tags=["lineage"],
    summary="The graph's log: refused edges and curators' corrections",
)
def graph_log(
    session: SessionDep,
    kind: Annotated[Literal[service.EVENT_KINDS] | None, Query()] = None,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> list[dict]:
    """Newest first: `conflict` (a detection's edge refused because it would close a cycle, kept
    for review), `edge_deleted` and `edge_set` (curators' corrections, with key and reason)."""
    return service.graph_log(session, kind, limit, offset)
