"""HTTP endpoints of the pages for people: the catalog at ``/``, the family-tree page (the HTML
side of ``GET /lineage/{name}``) and ``/static``.

``/lineage/{name}`` has two representations. The page's route here matches only requests whose
``Accept`` prefers ``text/html`` (``HtmlRoute``); every other request falls through to the JSON
route of ``app.lineage.endpoints``, so neither side knows the other.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import Scope

from app.core.deps import SessionDep, SettingsDep
from app.lineage.schemas import DEFAULT_DEPTH, DEFAULT_WIDTH, DepthQuery, WidthQuery
from app.registry.errors import UnknownModel
from app.web.loading import catalog_page, family_page
from app.web.render import STATIC_DIR, render_error_page

router = APIRouter(include_in_schema=False)


def static_files() -> StaticFiles:
    """The pages' stylesheet, shipped inside the package (mounted at ``/static``)."""
    return StaticFiles(directory=STATIC_DIR)


def _parse_quality(parameter: str) -> float:
    try:
        return min(max(float(parameter.split("=", 1)[1]), 0.0), 1.0)
    except (IndexError, ValueError):
        return 1.0


def prefers_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for the page rather than the JSON: it lists
    ``text/html`` (not with ``q=0``) at least as preferred as ``application/json``.

    Browsers send ``text/html,...,*/*;q=0.8``; API clients send ``application/json``, ``*/*``
    or nothing, and get the JSON as before.
    """
    html = json = 0.0
    for item in (accept or "").split(","):
        media, *parameters = (part.strip() for part in item.split(";"))
        quality = next((_parse_quality(p) for p in parameters if p.startswith("q=")), 1.0)
        media = media.lower()
        if media == "text/html":
            html = max(html, quality)
        elif media == "application/json":
            json = max(json, quality)
    return html > 0 and html >= json


class HtmlRoute(APIRoute):
    """A route that matches only requests preferring HTML (``prefers_html``); any other request
    is left to the routes after it."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE and not prefers_html(Headers(scope=scope).get("accept")):
            return Match.NONE, {}
        return match, child_scope


pages = APIRouter(route_class=HtmlRoute)


@pages.get("/lineage/{name:path}", response_class=HTMLResponse)
def get_family_page(
    name: str,
    session: SessionDep,
    settings: SettingsDep,
    depth: DepthQuery = DEFAULT_DEPTH,
    width: WidthQuery = DEFAULT_WIDTH,
) -> HTMLResponse:
    """The family-tree page of ``name``: the tree drawn ``depth`` generations up and down (at
    most ``MAX_LINEAGE_DEPTH``), ``width`` models a level; an HTML 404 page for an unknown name."""
    # Caches must keep the two representations of this URL apart.
    headers = {"Vary": "Accept"}
    try:
        html = family_page(session, name, depth, width, settings.max_lineage_depth)
    except UnknownModel as exc:
        page = render_error_page(404, "No such model", exc.message)
        return HTMLResponse(page, status_code=404, headers=headers)
    return HTMLResponse(html, headers=headers)


router.include_router(pages)


@router.get("/", response_class=HTMLResponse)
def get_catalog(
    session: SessionDep,
    q: Annotated[str | None, Query(max_length=300)] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    """The catalog page: search models by name, browse them a page at a time, recent jobs."""
    return HTMLResponse(catalog_page(session, q or None, page))
