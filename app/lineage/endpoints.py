"""HTTP endpoints of the lineage graph: a model's family tree."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep
from app.lineage.repository import LineageRepository
from app.lineage.schemas import FamilyTree
from app.registry.service import get_by_name

router = APIRouter(tags=["lineage"])


def family_tree(session: Session, name: str, max_depth: int) -> dict:
    """The JSON family tree of ``name``: ancestors and descendants up to ``max_depth`` edges away
    (nearest first) and every edge among the model and those relatives."""
    model = get_by_name(session, name)
    repository = LineageRepository(session)
    ancestors = repository.ancestors(model.id, max_depth)
    descendants = repository.descendants(model.id, max_depth)
    names = {model.id: model.name}
    names.update({r.model.id: r.model.name for r in (*ancestors, *descendants)})
    return {
        "model": model.name,
        "ancestors": [{"name": r.model.name, "depth": r.depth} for r in ancestors],
        "descendants": [{"name": r.model.name, "depth": r.depth} for r in descendants],
        "edges": [
            {
                "parent": names[edge.parent_id],
                "child": names[edge.child_id],
                "score": edge.score,
                "method": edge.method,
                "relation": edge.relation,
                "declared": edge.declared,
                "scores": edge.scores,
            }
            for edge in repository.edges_among(set(names))
        ],
    }


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
