"""HTTP endpoints of the lineage graph: a model's family tree as JSON, and a model with its
direct family. (Browsers asking for ``/lineage/{name}`` get the drawn page, served by
``app.web.endpoints``, whose route matches only requests that prefer HTML.)

``GET /models/{name}`` lives here rather than in the catalog because it joins a record with its
edges, and the graph sits above the catalog."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.core.deps import SessionDep, SettingsDep
from app.lineage import service
from app.lineage.schemas import DEFAULT_DEPTH, DEFAULT_WIDTH, DepthQuery, FamilyTree, WidthQuery
from app.registry.schemas import ModelDetail

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
