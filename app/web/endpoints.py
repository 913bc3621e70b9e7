"""HTTP endpoints of the pages for people: the catalog at ``/``, the family-tree page (served
by ``GET /lineage/{name}`` to browsers, see ``app.lineage.endpoints``) and ``/static``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

from app.api.deps import SessionDep
from app.registry.errors import UnknownModel
from app.web.pages import STATIC_DIR, catalog_page, family_page, render_error_page

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


def family_page_response(
    session: Session, name: str, depth: int, width: int, max_depth: int
) -> HTMLResponse:
    """The family-tree page of ``name``, or an HTML 404 page when no model has that name."""
    try:
        html = family_page(session, name, depth, width, max_depth)
    except UnknownModel as exc:
        page = render_error_page(404, "No such model", exc.message)
        return HTMLResponse(page, status_code=404, headers={"Vary": "Accept"})
    return HTMLResponse(html, headers={"Vary": "Accept"})


@router.get("/", response_class=HTMLResponse)
def get_catalog(
    session: SessionDep,
    q: Annotated[str | None, Query(max_length=300)] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    """The catalog page: search models by name, browse them a page at a time, recent jobs."""
    return HTMLResponse(catalog_page(session, q or None, page))
