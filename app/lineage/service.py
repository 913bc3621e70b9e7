"""Family-tree queries over the lineage graph (no HTTP; SQL lives in the repository)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.lineage.models import Edge
from app.lineage.repository import LineageRepository, Relative
from app.registry.models import Model
from app.registry.service import get_by_name


def tree_dict(
    model: Model,
    ancestors: list[Relative],
    descendants: list[Relative],
    edges: list[Edge],
    names: dict[int, str],
    *,
    with_evidence: bool = False,
) -> dict:
    """The public JSON of a family: the model, its relatives with their depths, and the edges
    (``names`` maps the ids of every model the edges touch to names)."""
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
                **({"evidence": edge.evidence} if with_evidence else {}),
            }
            for edge in edges
        ],
    }


def family_tree(session: Session, name: str, max_depth: int) -> dict:
    """The JSON family tree of ``name``: ancestors and descendants up to ``max_depth`` edges away
    (nearest first) and every edge among the model and those relatives."""
    model = get_by_name(session, name)
    repository = LineageRepository(session)
    ancestors = repository.ancestors(model.id, max_depth)
    descendants = repository.descendants(model.id, max_depth)
    names = {model.id: model.name}
    names.update({r.model.id: r.model.name for r in (*ancestors, *descendants)})
    return tree_dict(model, ancestors, descendants, repository.edges_among(set(names)), names)
