"""All SQL of the catalog: the ``models`` table (the caller's session commits)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Row, Select, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.registry.models import Model


class ModelRepository:
    """Reads and writes of catalog records within the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def by_name(self, name: str) -> Model | None:
        """The model called ``name``, if any."""
        return self.session.scalars(select(Model).where(Model.name == name)).first()

    def by_sha256(self, sha256: str) -> Model | None:
        """The model with these weights, if any."""
        return self.session.scalars(select(Model).where(Model.sha256 == sha256)).first()

    def by_id(self, model_id: int) -> Model | None:
        """The model with this id, if any."""
        return self.session.get(Model, model_id)

    def name_is_taken(self, name: str) -> bool:
        """Whether some model carries ``name``."""
        return self.session.scalars(select(Model.id).where(Model.name == name)).first() is not None

    def insert(self, record: Model) -> bool:
        """Add ``record`` inside a savepoint: False (and nothing added) when a unique constraint
        refuses it, as when a concurrent request registered the same weights or name first; the
        caller's transaction survives either way."""
        try:
            with self.session.begin_nested():
                self.session.add(record)
        except IntegrityError:
            return False
        return True

    @staticmethod
    def _catalog(query: Select, exclude_id: int, architecture: str | None) -> Select:
        """``query`` restricted to catalog parents except the model itself; with
        ``architecture``, to those of that architecture or of none (an indexed column)."""
        column = Model.__table__.c  # the table's own: a select of columns stays plain SQL
        query = query.where(column.is_candidate, column.id != exclude_id)
        if architecture is not None:
            query = query.where(
                or_(column.architecture == architecture, column.architecture.is_(None))
            )
        return query

    def candidates(self, exclude_id: int, architecture: str | None) -> list[Model]:
        """Catalog parents except the model itself, oldest first; with ``architecture``, only
        those of that architecture or of none (filtered in SQL)."""
        query = self._catalog(select(Model), exclude_id, architecture)
        return list(self.session.scalars(query.order_by(Model.id)))

    def candidate_summaries(self, exclude_id: int, architecture: str | None) -> list[Row]:
        """(id, sha256, sketch_layout, sketch_outputs_key) of every one of ``candidates``, in
        no particular order: what a shortlist needs to know which sketches it has, without
        reading any sketch."""
        column = Model.__table__.c  # plain columns: rows come back as tuples, no ORM objects
        query = self._catalog(
            select(column.id, column.sha256, column.sketch_layout, column.sketch_outputs_key),
            exclude_id,
            architecture,
        )
        return list(self.session.execute(query).all())

    def sketches(self, ids: list[int]) -> Iterator[Row]:
        """(id, sha256, sketch_layout, sketch, sketch_outputs_key, sketch_outputs) of the models
        ``ids``, a few hundred at a time."""
        column = Model.__table__.c
        for start in range(0, len(ids), 500):  # well within every database's bound parameters
            yield from self.session.execute(
                select(
                    column.id,
                    column.sha256,
                    column.sketch_layout,
                    column.sketch,
                    column.sketch_outputs_key,
                    column.sketch_outputs,
                ).where(column.id.in_(ids[start : start + 500]))
            )

    def delete(self, model: Model) -> None:
        """Delete ``model``'s row (flushed, so that a refusal by the database comes out here).
        Rows that refer to it are the caller's to clear first."""
        self.session.delete(model)
        self.session.flush()

    def all_sha256(self) -> set[str]:
        """The weights' SHA-256 of every registered model."""
        return set(self.session.scalars(select(Model.sha256)))

    def by_ids(self, ids: list[int]) -> list[Model]:
        """The models with these ids, oldest first (ids that no longer exist are left out)."""
        found: list[Model] = []
        for start in range(0, len(ids), 500):  # well within every database's bound parameters
            chunk = ids[start : start + 500]
            found += self.session.scalars(select(Model).where(Model.id.in_(chunk)))
        return sorted(found, key=lambda model: model.id)

    def sketch_layouts(self, layouts: set[str]) -> dict[str, list]:
        """The stored keys of each sketch layout, read from one model per layout."""
        if not layouts:
            return {}
        first = (
            select(func.min(Model.id))
            .where(Model.sketch_layout.in_(layouts))
            .group_by(Model.sketch_layout)
        )
        rows = self.session.execute(
            select(Model.sketch_layout, Model.sketch_tensors).where(Model.id.in_(first))
        )
        return dict(rows.tuples().all())

    def matching_names_or_hub_ids(self, names: list[str]) -> list[Model]:
        """Models whose name or hub ID is one of ``names``."""
        if not names:
            return []
        return list(
            self.session.scalars(
                select(Model).where(or_(Model.name.in_(names), Model.hub_id.in_(names)))
            )
        )

    @staticmethod
    def _matching(q: str | None) -> Select:
        query = select(Model)
        if q:
            # Escape LIKE's wildcards so `q` is a literal substring, the same on both databases.
            query = query.where(Model.name.contains(q, autoescape=True))
        return query

    def page(self, q: str | None, limit: int, offset: int) -> tuple[list[Model], int]:
        """A page of models whose names contain ``q``, newest first, and how many match."""
        query = self._matching(q)
        total = self.session.scalar(select(func.count()).select_from(query.subquery())) or 0
        page = self.session.scalars(
            query.order_by(Model.created_at.desc(), Model.id.desc()).limit(limit).offset(offset)
        )
        return list(page), total
