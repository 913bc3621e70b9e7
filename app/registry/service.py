"""Registering models in the catalog (no HTTP here; the caller's session commits)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.engine.model_files import LoadedModel
from app.registry.errors import NameTaken, UnknownModel
from app.registry.models import Model


def get_by_name(session: Session, name: str) -> Model:
    """The model called ``name``; ``UnknownModel`` if none is."""
    model = session.scalars(select(Model).where(Model.name == name)).first()
    if model is None:
        raise UnknownModel(f"no model named {name!r} is registered")
    return model


def register(
    session: Session,
    loaded: LoadedModel,
    folder: Path,
    name: str,
    *,
    candidate: bool,
    hub_id: str | None = None,
    revision: str | None = None,
) -> tuple[Model, bool]:
    """The catalog record of these weights, created if new: (record, created).

    The same weights registered again return the existing record (under its first name); asking
    for them as a candidate parent makes the record one. A name already used by other weights
    raises ``NameTaken``.
    """
    existing = session.scalars(select(Model).where(Model.sha256 == loaded.sha256)).first()
    if existing is not None:
        if candidate and not existing.is_candidate:
            existing.is_candidate = True
        return existing, False
    if session.scalars(select(Model.id).where(Model.name == name)).first() is not None:
        raise NameTaken(f"the name {name!r} is already registered for other weights")
    record = Model(
        name=name,
        sha256=loaded.sha256,
        hub_id=hub_id,
        revision=revision,
        architecture=(loaded.config or {}).get("model_type"),
        config=loaded.config,
        num_bytes=loaded.num_bytes,
        num_parameters=loaded.num_parameters,
        storage_path=str(folder),
        is_candidate=candidate,
    )
    try:
        # A savepoint: a concurrent registration of the same weights or name makes this insert
        # fail on a unique constraint; the outer transaction survives and we answer as if we
        # had come second.
        with session.begin_nested():
            session.add(record)
    except IntegrityError:
        winner = session.scalars(select(Model).where(Model.sha256 == loaded.sha256)).first()
        if winner is not None:
            return winner, False
        raise NameTaken(f"the name {name!r} is already registered for other weights") from None
    return record, True


def register_stored(
    session: Session,
    loaded: LoadedModel,
    folder: Path,
    fresh: bool,
    name: str,
    *,
    candidate: bool,
    hub_id: str | None = None,
    revision: str | None = None,
) -> tuple[Model, bool]:
    """``register`` for weights just stored by ``storage.commit_staged``: when the record is
    refused (the name is taken), weights this upload stored are removed again, so a refused
    upload leaves no files behind."""
    try:
        return register(
            session, loaded, folder, name, candidate=candidate, hub_id=hub_id, revision=revision
        )
    except NameTaken:
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def candidates(session: Session, exclude_id: int) -> list[Model]:
    """Every catalog parent except the model itself, oldest first."""
    return list(
        session.scalars(
            select(Model).where(Model.is_candidate, Model.id != exclude_id).order_by(Model.id)
        )
    )


def to_dict(model: Model) -> dict:
    """The public JSON record of a model."""
    return {
        "name": model.name,
        "sha256": model.sha256,
        "hub_id": model.hub_id,
        "revision": model.revision,
        "architecture": model.architecture,
        "num_parameters": model.num_parameters,
        "num_bytes": model.num_bytes,
        "is_candidate": model.is_candidate,
        "created_at": model.created_at.isoformat() if model.created_at else None,
    }


def _matching(q: str | None):
    query = select(Model)
    if q:
        # Escape LIKE's wildcards so `q` is a literal substring, the same on both databases.
        query = query.where(Model.name.contains(q, autoescape=True))
    return query


def list_models(session: Session, q: str | None, limit: int, offset: int) -> tuple[list, int]:
    """A page of models whose names contain ``q``, newest first, and how many match."""
    query = _matching(q)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = session.scalars(
        query.order_by(Model.created_at.desc(), Model.id.desc()).limit(limit).offset(offset)
    )
    return list(page), total
