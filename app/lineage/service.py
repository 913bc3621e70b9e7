"""The lineage graph's logic: family trees, a model's direct family, and writing edges. No HTTP
and no commit here; SQL lives in ``repository``, catalog records come from ``app.registry``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.lineage.errors import CycleRefused, SelfEdge
from app.lineage.models import Edge
from app.lineage.repository import LineageRepository, Relative
from app.registry import service as registry
from app.registry.models import Model


@dataclass(frozen=True)
class Relatives:
    """A model's family: ancestors and descendants (nearest first) up to the walked depth, the
    edges among the model and the relatives shown, and the names of every model shown by id."""

    model: Model
    ancestors: list[Relative]
    descendants: list[Relative]
    edges: list[Edge]
    names: dict[int, str]


def relatives(
    session: Session, name: str, max_depth: int, shown_depth: int | None = None
) -> Relatives:
    """The family of ``name`` walked ``max_depth`` edges each way; edges only among the model
    and relatives at most ``shown_depth`` away (default: all). ``UnknownModel`` if no model has
    that name."""
    model = registry.get_by_name(session, name)
    repository = LineageRepository(session)
    ancestors = repository.ancestors(model.id, max_depth)
    descendants = repository.descendants(model.id, max_depth)
    shown = shown_depth if shown_depth is not None else max_depth
    names = {model.id: model.name}
    names.update({r.model.id: r.model.name for r in (*ancestors, *descendants) if r.depth <= shown})
    return Relatives(model, ancestors, descendants, repository.edges_among(set(names)), names)


def edge_dict(edge: Edge, names: dict[int, str], *, with_evidence: bool = False) -> dict:
    """The public JSON of an edge (``names`` maps its ends' ids to names)."""
    return {
        "parent": names[edge.parent_id],
        "child": names[edge.child_id],
        "score": edge.score,
        "method": edge.method,
        "relation": edge.relation,
        "declared": edge.declared,
        "scores": edge.scores,
        **({"evidence": edge.evidence} if with_evidence else {}),
    }


def tree_dict(family: Relatives, *, with_evidence: bool = False) -> dict:
    """The public JSON of a family (``GET /lineage``): the model, its relatives with their
    depths, and the edges; with ``with_evidence`` each edge also carries its evidence."""
    return {
        "model": family.model.name,
        "ancestors": [{"name": r.model.name, "depth": r.depth} for r in family.ancestors],
        "descendants": [{"name": r.model.name, "depth": r.depth} for r in family.descendants],
        "edges": [edge_dict(e, family.names, with_evidence=with_evidence) for e in family.edges],
    }


def family_tree(session: Session, name: str, max_depth: int) -> dict:
    """The JSON family tree of ``name``: ancestors and descendants up to ``max_depth`` edges away
    (nearest first) and every edge among the model and those relatives."""
    return tree_dict(relatives(session, name, max_depth))


def model_detail(session: Session, name: str) -> dict:
    """A model's record with the edges into it and its children's names (``GET /models``)."""
    family = relatives(session, name, max_depth=1)
    into = [e for e in family.edges if e.child_id == family.model.id]
    return {
        **registry.to_dict(family.model),
        "parents": [
            {
                "parent": family.names[edge.parent_id],
                "score": edge.score,
                "method": edge.method,
                "relation": edge.relation,
                "declared": edge.declared,
            }
            for edge in into
        ],
        "children": [r.model.name for r in family.descendants],
    }


def add_edge(session: Session, parent: Model, child: Model, **fields: Any) -> dict | None:
    """Write parent → child (or update that pair's edge) inside a savepoint; ``fields`` are
    ``LineageRepository.add_edge``'s (relation, score, method, scores, evidence, declared).

    None when written; when the graph refuses it (a self-edge, or a cycle),
    ``{"parent", "code", "message"}`` and nothing written, the caller's transaction intact."""
    try:
        with session.begin_nested():
            LineageRepository(session).add_edge(parent.id, child.id, **fields)
    except (CycleRefused, SelfEdge) as exc:
        return {"parent": parent.name, "code": exc.code, "message": exc.message}
    return None
