"""All SQL of the lineage graph: edges, and ancestors/descendants by recursive CTE.

The same queries run on PostgreSQL and SQLite (both have ``WITH RECURSIVE``). Walks are bounded
by depth, so a corrupt graph or a huge family cannot run away.

Cycles are refused in ``add_edge``: the new edge parent → child closes a cycle exactly when the
parent is already a descendant of the child (or is the child). The check and the insert must not
interleave with another writer's, or two edges A → B and B → A inserted at once would both pass;
on PostgreSQL every graph write therefore takes one transaction-scoped advisory lock first. On
SQLite every transaction holds the database's single write lock from its start
(``app.core.db.make_engine``), so writers never interleave.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, Select, and_, literal, or_, select, text, update
from sqlalchemy.orm import Session

from app.lineage.errors import CycleRefused, SelfEdge
from app.lineage.models import Edge, GraphEvent
from app.registry.models import Model

# Any fixed 64-bit key: "the lineage graph is being written".
GRAPH_WRITE_LOCK = 0x4C494E45414745


@dataclass(frozen=True)
class Relative:
    """A model reached from another by walking edges, ``depth`` edges away (1 = direct)."""

    model: Model
    depth: int


class LineageRepository:
    """Graph reads and writes within the caller's session (the caller commits)."""

    def __init__(self, session: Session):
        self.session = session

    def _walk(self, start_id: int, max_depth: int, upward: bool) -> Select:
        """SELECT (model_id, depth) of every model reachable from ``start_id``: toward parents
        when ``upward``, toward children otherwise; the smallest depth per model."""
        near, far = (Edge.child_id, Edge.parent_id) if upward else (Edge.parent_id, Edge.child_id)
        base = select(far.label("model_id"), literal(1, Integer).label("depth")).where(
            near == start_id
        )
        walk = base.cte("walk", recursive=True)
        step = select(far.label("model_id"), (walk.c.depth + 1).label("depth")).where(
            and_(near == walk.c.model_id, walk.c.depth < max_depth)
        )
        walk = walk.union(step)
        return select(walk.c.model_id, walk.c.depth)

    def _relatives(self, model_id: int, max_depth: int, upward: bool) -> list[Relative]:
        walk = self._walk(model_id, max_depth, upward).subquery()
        rows = self.session.execute(
            select(Model, walk.c.depth)
            .join(walk, Model.id == walk.c.model_id)
            .order_by(walk.c.depth, Model.name)
        ).all()
        nearest: dict[int, Relative] = {}
        for model, depth in rows:
            if model.id not in nearest:  # a merge reaches one ancestor by several paths
                nearest[model.id] = Relative(model, depth)
        return list(nearest.values())

    def ancestors(self, model_id: int, max_depth: int = 16) -> list[Relative]:
        """Parents, grandparents, ... up to ``max_depth`` edges, nearest first."""
        return self._relatives(model_id, max_depth, upward=True)

    def descendants(self, model_id: int, max_depth: int = 16) -> list[Relative]:
        """Children, grandchildren, ... down to ``max_depth`` edges, nearest first."""
        return self._relatives(model_id, max_depth, upward=False)

    def edges_among(self, model_ids: set[int]) -> list[Edge]:
        """Every edge whose two ends are both in ``model_ids``."""
        if not model_ids:
            return []
        ids = list(model_ids)
        return list(
            self.session.scalars(
                select(Edge)
                .where(Edge.parent_id.in_(ids), Edge.child_id.in_(ids))
                .order_by(Edge.id)
            )
        )

    def parents_of(self, model_id: int) -> list[Edge]:
        """The edges into ``model_id``."""
        return list(self.session.scalars(select(Edge).where(Edge.child_id == model_id)))

    def _lock_graph(self) -> None:
        bind = self.session.get_bind()
        if bind.dialect.name == "postgresql":
            self.session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": GRAPH_WRITE_LOCK}
            )

    def _is_descendant(self, model_id: int, of_id: int) -> bool:
        """Whether ``model_id`` is reachable from ``of_id`` along edges (unbounded depth)."""
        walk = self._walk(of_id, 1_000_000, upward=False).subquery()
        found = self.session.execute(
            select(walk.c.model_id).where(walk.c.model_id == model_id).limit(1)
        ).first()
        return found is not None

    def add_edge(
        self,
        parent_id: int,
        child_id: int,
        *,
        relation: str = "finetune",
        score: float | None = None,
        method: str | None = None,
        scores: dict | None = None,
        evidence: dict | None = None,
        declared: bool = False,
    ) -> Edge:
        """Insert parent → child, or update the existing edge of that pair (idempotent, so a
        re-run job writes the same row). Raises ``SelfEdge`` or ``CycleRefused``."""
        if parent_id == child_id:
            raise SelfEdge(f"a model cannot be its own parent (model {parent_id})")
        self._lock_graph()
        existing = self.session.scalars(
            select(Edge).where(Edge.parent_id == parent_id, Edge.child_id == child_id)
        ).first()
        if existing is None and self._is_descendant(parent_id, child_id):
            raise CycleRefused(
                f"model {parent_id} descends from model {child_id}: "
                f"an edge {parent_id} → {child_id} would close a cycle"
            )
        edge = existing or Edge(parent_id=parent_id, child_id=child_id)
        edge.relation, edge.score, edge.method = relation, score, method
        edge.scores, edge.evidence, edge.declared = scores, evidence, declared
        if existing is None:
            self.session.add(edge)
        self.session.flush()
        return edge

    def edge(self, parent_id: int, child_id: int) -> Edge | None:
        """The edge parent → child, if any."""
        return self.session.scalars(
            select(Edge).where(Edge.parent_id == parent_id, Edge.child_id == child_id)
        ).first()

    def delete_edge(self, edge: Edge) -> None:
        """Remove ``edge`` (under the graph's write lock, like every graph write)."""
        self._lock_graph()
        self.session.delete(edge)
        self.session.flush()

    def add_event(self, event: GraphEvent) -> GraphEvent:
        """Record a graph event (flushed)."""
        self.session.add(event)
        self.session.flush()
        return event

    def events(self, kind: str | None, limit: int, offset: int) -> list[GraphEvent]:
        """Graph events (of ``kind``, or all), newest first."""
        query = select(GraphEvent)
        if kind is not None:
            query = query.where(GraphEvent.kind == kind)
        query = query.order_by(GraphEvent.id.desc()).limit(limit).offset(offset)
        return list(self.session.scalars(query))

    def edges_of(self, model_id: int) -> list[Edge]:
        """Every edge into or out of ``model_id``, oldest first, read under the graph's write
        lock (taken for the rest of the transaction: no edge to it can be added meanwhile)."""
        self._lock_graph()
        return list(
            self.session.scalars(
                select(Edge)
                .where(or_(Edge.parent_id == model_id, Edge.child_id == model_id))
                .order_by(Edge.id)
            )
        )

    def release_events(self, model_id: int) -> None:
        """Graph events that name ``model_id`` by id let go of it (``parent_id``/``child_id``
        NULL), as ``ON DELETE SET NULL`` would: their copied names still read."""
        for column in ("parent_id", "child_id"):
            self.session.execute(
                update(GraphEvent)
                .where(getattr(GraphEvent, column) == model_id)
                .values({column: None})
                .execution_options(synchronize_session=False)
            )
