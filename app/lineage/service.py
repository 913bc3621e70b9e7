"""The lineage graph's logic: family trees, a model's direct family, and writing edges. No HTTP
and no commit here; SQL lives in ``repository``, catalog records come from ``app.registry``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.lineage.errors import CycleRefused, SelfEdge, UnknownEdge
from app.lineage.models import Edge, GraphEvent
from app.lineage.repository import LineageRepository, Relative
from app.registry import service as registry
from app.registry.models import Model

log = logging.getLogger(__name__)
EVENT_KINDS = ("conflict", "edge_deleted", "edge_set")


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


def record_conflict(
    session: Session,
    parent: Model,
    child: Model,
    job_id: str | None,
    refusal: dict,
    direction: dict[str, float] | None = None,
) -> None:
    """Keep an edge the graph refused (it would close a cycle) as a ``conflict`` event for a
    curator to review (``GET /audit?verdict=conflict``), rather than dropping it silently, with
    the direction the evidence proposes (``proposed_direction``)."""
    LineageRepository(session).add_event(
        GraphEvent(
            kind="conflict",
            parent_id=parent.id,
            child_id=child.id,
            parent_name=parent.name,
            child_name=child.name,
            job_id=job_id,
            detail={
                "code": refusal["code"],
                "message": refusal["message"],
                **proposed_direction(parent.name, child.name, direction),
            },
        )
    )


def proposed_direction(parent: str, child: str, direction: dict[str, float] | None) -> dict:
    """Which way the refused edge ``parent`` → ``child`` should point, by which of the two is
    nearer the family's root: ``direction`` holds the job's outward log ratios (``Ranking.
    direction``: log(‖θ_k − θ̄‖ / ‖θ_child − θ̄‖) from the candidates' centre θ̄). Below 0,
    ``parent`` is the nearer, as a parent is: the proposal is the refused edge, and the
    existing path from ``child`` to ``parent`` is what looks wrong. Above 0, ``parent`` looks
    like the child's descendant: the proposal is the reverse edge, as the graph has it. Without
    the ratio (fewer than three comparable candidates, or a method other than ``auto``), no
    direction is proposed and the answer says why."""
    ratio = (direction or {}).get(parent)
    if ratio is None:
        return {
            "proposed": None,
            "direction_evidence": None,
            "basis": "no direction evidence: it needs auto with at least three comparable "
            "candidates; a curator decides",
        }
    nearer, farther = (parent, child) if ratio < 0 else (child, parent)
    return {
        "proposed": {"parent": nearer, "child": farther},
        "direction_evidence": ratio,
        "basis": f"{nearer} lies nearer the family's centre than {farther} "
        f"(outward log ratio of {parent} against {child}: {ratio:+.3f})",
    }


def _edge_between(session: Session, parent_name: str, child_name: str) -> tuple[Edge, dict]:
    parent = registry.get_by_name(session, parent_name)
    child = registry.get_by_name(session, child_name)
    edge = LineageRepository(session).edge(parent.id, child.id)
    if edge is None:
        raise UnknownEdge(f"no edge {parent_name!r} → {child_name!r}")
    return edge, {parent.id: parent.name, child.id: child.name}


def delete_edge(
    session: Session, parent_name: str, child_name: str, *, key_id: int | None, reason: str
) -> dict:
    """Delete the edge parent → child (a curator's correction), logged as an ``edge_deleted``
    event with the edge as it was, the key and the reason. ``UnknownModel``/``UnknownEdge``."""
    edge, names = _edge_between(session, parent_name, child_name)
    before = edge_dict(edge, names, with_evidence=True)
    _delete_logged(LineageRepository(session), edge, before, key_id=key_id, reason=reason)
    return before


def _delete_logged(
    repository: LineageRepository,
    edge: Edge,
    before: dict,
    *,
    key_id: int | None,
    reason: str,
    deleted_model: Model | None = None,
) -> None:
    """Delete ``edge`` (``before``: its public JSON) and log it as an ``edge_deleted`` event
    with the key and the reason; ``deleted_model``: the model whose deletion takes the edge
    with it (the event keeps its name, not its id)."""
    gone = deleted_model.id if deleted_model is not None else None
    extra = {"deleted_model": deleted_model.name} if deleted_model is not None else {}
    repository.delete_edge(edge)
    repository.add_event(
        GraphEvent(
            kind="edge_deleted",
            parent_id=None if edge.parent_id == gone else edge.parent_id,
            child_id=None if edge.child_id == gone else edge.child_id,
            parent_name=before["parent"],
            child_name=before["child"],
            key_id=key_id,
            detail={"reason": reason, **extra, "edge": before},
        )
    )
    log.info("key %s deleted edge %s -> %s: %s", key_id, before["parent"], before["child"], reason)


def set_edge(
    session: Session,
    parent_name: str,
    child_name: str,
    *,
    relation: str,
    key_id: int | None,
    reason: str,
) -> dict:
    """Write parent → child as a curator's statement (declared, ``evidence.source`` curator),
    or make the existing edge of that pair one; logged as an ``edge_set`` event. A self-edge or
    a cycle is refused (``SelfEdge``, ``CycleRefused``: the curator is told at once)."""
    parent = registry.get_by_name(session, parent_name)
    child = registry.get_by_name(session, child_name)
    repository = LineageRepository(session)
    existing = repository.edge(parent.id, child.id)  # its inferred scores stay
    edge = repository.add_edge(
        parent.id,
        child.id,
        relation=relation,
        score=existing.score if existing else None,
        method=existing.method if existing else None,
        scores=existing.scores if existing else None,
        declared=True,
        evidence={"source": "curator", "key_id": key_id, "reason": reason},
    )
    written = edge_dict(edge, {parent.id: parent.name, child.id: child.name}, with_evidence=True)
    repository.add_event(
        GraphEvent(
            kind="edge_set",
            parent_id=parent.id,
            child_id=child.id,
            parent_name=parent.name,
            child_name=child.name,
            key_id=key_id,
            detail={"reason": reason, "edge": written},
        )
    )
    log.info("key %s set edge %s -> %s: %s", key_id, parent_name, child_name, reason)
    return written


def graph_log(session: Session, kind: str | None, limit: int, offset: int) -> list[dict]:
    """Graph events (conflicts, curators' corrections), newest first, as public JSON."""
    return [
        {
            "id": event.id,
            "kind": event.kind,
            "parent": event.parent_name,
            "child": event.child_name,
            "job_id": event.job_id,
            "key_id": event.key_id,
            "detail": event.detail,
            "created_at": event.created_at.isoformat() if event.created_at else None,
        }
        for event in LineageRepository(session).events(kind, limit, offset)
    ]


def remove_edges_of(session: Session, model: Model, key_id: int | None, reason: str) -> int:
    """Remove every edge into or out of ``model`` (it is being deleted: ``detection.delete_model``
    runs this in its transaction), each logged as an ``edge_deleted`` event with the edge as it
    was, ``key_id`` and ``reason``; older events let go of the model's id (their names stay).
    Returns how many edges were removed."""
    repository = LineageRepository(session)
    edges = repository.edges_of(model.id)
    names = {model.id: model.name}
    for edge in edges:
        for end in (edge.parent_id, edge.child_id):
            if end not in names:
                other = registry.get_by_id(session, end)
                names[end] = other.name if other is not None else f"#{end}"
    for edge in edges:
        before = edge_dict(edge, names, with_evidence=True)
        _delete_logged(repository, edge, before, key_id=key_id, reason=reason, deleted_model=model)
    repository.release_events(model.id)
    return len(edges)
