"""HTTP endpoints of the lineage graph: a model's family tree."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SessionDep, SettingsDep
from app.lineage.schemas import FamilyTree
from app.lineage.service import family_tree

router = APIRouter(tags=["lineage"])


@router.get(
    "/lineage/{name:path}",
    response_model=FamilyTree,
    summary="A model's family tree",
    responses={404: {"description": "No model has that name"}},
)
def get_lineage(name: str, session: SessionDep, settings: SettingsDep) -> dict:
    """Ancestors and descendants of a model (up to `MAX_LINEAGE_DEPTH` edges away) and the edges
    among them, each with its score, method and whether it was declared. `name` may contain `/`.
    """
    return family_tree(session, name, settings.max_lineage_depth)
