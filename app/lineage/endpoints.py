"""HTTP endpoints of the lineage graph: a model's family tree, as JSON for programs and as a
drawn page for browsers (content negotiation on ``Accept``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from app.api.deps import SessionDep, SettingsDep
from app.lineage.schemas import FamilyTree
from app.lineage.service import family_tree
from app.web.endpoints import family_page_response, prefers_html
from app.web.pages import DEFAULT_DEPTH, DEFAULT_WIDTH, MAX_WIDTH

router = APIRouter(tags=["lineage"])


@router.get(
    "/lineage/{name:path}",
    response_model=FamilyTree,
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
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    depth: Annotated[
        int,
        Query(
            ge=1,
            le=256,
            description="HTML page only: generations drawn each way (at most MAX_LINEAGE_DEPTH).",
        ),
    ] = DEFAULT_DEPTH,
    width: Annotated[
        int, Query(ge=1, le=MAX_WIDTH, description="HTML page only: models drawn per level.")
    ] = DEFAULT_WIDTH,
) -> dict | HTMLResponse:
    """Ancestors and descendants of a model (up to `MAX_LINEAGE_DEPTH` edges away) and the edges
    among them, each with its score, method and whether it was declared. `name` may contain `/`.

    A request whose `Accept` header prefers `text/html` (a browser) gets the family-tree page
    instead: the tree drawn `depth` generations up and down, `width` models a level.
    """
    # Caches must keep the two representations of this URL apart.
    response.headers["Vary"] = "Accept"
    if prefers_html(request.headers.get("accept")):
        return family_page_response(session, name, depth, width, settings.max_lineage_depth)
    return family_tree(session, name, settings.max_lineage_depth)
