"""The catalog's logic: ingesting models (upload or hub ID) and reading records. No HTTP here,
no commit: the caller's session commits, and SQL lives in ``repository``.

``ingest`` is the one way into the catalog, for ``POST /parents`` and ``POST /detect`` alike:
stage the files (streamed upload, or a hub snapshot pinned to a commit), read what they declare,
validate them with the engine, move them to their content address, and create or find the
record. A refused model leaves no files and no row behind.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import Caller, Role
from app.core.config import Settings
from app.core.db import after_commit
from app.engine.model_files import LoadedModel
from app.engine.sketch import model_sketch, output_sketch
from app.hub.declared import DeclaredParent, declared_parents
from app.hub.resolve import resolve_with_settings
from app.registry import shortlist
from app.registry.errors import NameTaken, UnknownModel
from app.registry.models import Model
from app.registry.repository import ModelRepository
from app.registry.storage import (
    commit_staged,
    mark_committed,
    remove_stale,
    stage_folder,
    stage_upload,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    """A model sent as its files: (file name as the client gave it, readable stream) pairs."""

    files: list[tuple[str | None, BinaryIO]] = field(default_factory=list)


@dataclass(frozen=True)
class HubReference:
    """A model named by its Hugging Face hub ID, at ``revision`` (default: main)."""

    hub_id: str
    revision: str | None = None


ModelSource = Upload | HubReference


@dataclass(frozen=True)
class Ingested:
    """What ``ingest`` did: the record, whether this call created it, and the parents that this
    request's own files declare (read before storage dedupes the weights: the same weights stored
    earlier keep their first files, but this upload's model card is what this request says)."""

    model: Model
    created: bool
    declared: list[DeclaredParent]
    # Whether the caller owns the record (created it now or earlier; no caller: the command
    # line or the benchmark, trusted), and what to tell a caller about an existing record.
    owned: bool = True
    notice: str | None = None


def default_name(loaded: LoadedModel) -> str:
    """The name of an upload that came without one: ``upload-<first 12 hex of its SHA-256>``."""
    return f"upload-{loaded.sha256[:12]}"


def ingest(
    session: Session,
    settings: Settings,
    source: ModelSource,
    *,
    name: str | None,
    candidate: bool,
    caller: Caller | None = None,
) -> Ingested:
    """Store, validate and register a model; the same weights twice give the existing record.

    ``name``: an upload's name (None: ``default_name``); a hub model is always named by its hub
    ID and pinned to the commit its revision resolves to. ``candidate``: whether the record is a
    catalog parent that new children are scored against. ``caller``: the API key asking (None:
    the command line or the benchmark); a new record is its, an existing one is never renamed
    and becomes a candidate only for a curator (``Ingested.notice`` says what was kept).
    """
    hub_id = revision = None
    if isinstance(source, HubReference):
        hub = resolve_with_settings(settings, source.hub_id, source.revision)
        staging = stage_folder(settings.storage_dir, hub.folder, settings.max_model_bytes)
        name, hub_id, revision = hub.hub_id, hub.hub_id, hub.revision
    else:
        staging = stage_upload(settings.storage_dir, source.files, settings.max_model_bytes)
    declared = declared_parents(staging)
    folder, loaded, fresh = commit_staged(
        settings.storage_dir, staging, settings.max_model_bytes, settings.device
    )
    if fresh:  # stored by this request: the sweeper's until the row commits
        after_commit(session, partial(mark_committed, folder))
    try:
        model, created = register(
            session,
            loaded,
            folder,
            name or default_name(loaded),
            candidate=candidate,
            hub_id=hub_id,
            revision=revision,
            device=settings.device,
            caller=caller,
        )
    except NameTaken:
        if fresh:  # weights this request stored for a record that was refused
            shutil.rmtree(folder, ignore_errors=True)
        raise
    owned = created or caller is None or model.created_by == caller.id
    notice = None if created else existing_notice(model, name, owned)
    return Ingested(model, created, declared, owned, notice)


def existing_notice(model: Model, name: str | None, owned: bool) -> str:
    """What a request that sent already registered weights is told: the record is the existing
    one, under its first name, unchanged by this request's name or model card."""
    asked = f"; the name {name!r} was not used" if name and name != model.name else ""
    whose = "" if owned else " by another key"
    return (
        f"these weights (sha256 {model.sha256[:12]}…) are already registered as "
        f"{model.name!r}{whose}{asked}: this is the existing record"
    )


def register(
    session: Session,
    loaded: LoadedModel,
    folder: Path,
    name: str,
    *,
    candidate: bool,
    hub_id: str | None = None,
    revision: str | None = None,
    device: str = "cpu",
    caller: Caller | None = None,
) -> tuple[Model, bool]:
    """The catalog record of these stored weights, created if new: (record, created).

    The same weights registered again return the existing record (under its first name, never
    renamed); asking for them as a candidate parent makes the record one only when ``caller`` is
    a curator (or None: the command line). A name already used by other weights raises
    ``NameTaken``. A new record is ``caller``'s (``created_by``). The record's sketch is computed
    here, its output part by one forward pass on ``device`` (the engine's).
    """
    repository = ModelRepository(session)
    existing = repository.by_sha256(loaded.sha256)
    if existing is not None:
        may_promote = caller is None or caller.has(Role.CURATOR)
        if candidate and may_promote and not existing.is_candidate:
            existing.is_candidate = True
        if existing.sketch is None:  # registered before sketches existed
            _store_sketch(existing, loaded, device)
        elif existing.sketch_outputs_key is None:  # registered before output parts existed
            _store_outputs(existing, output_sketch(loaded, device))
        return existing, False
    if repository.name_is_taken(name):
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
        created_by=caller.id if caller is not None else None,
    )
    _store_sketch(record, loaded, device)
    if repository.insert(record):
        return record, True
    # A concurrent registration won the race: answer as if we had come second.
    winner = repository.by_sha256(loaded.sha256)
    if winner is not None:
        return winner, False
    raise NameTaken(f"the name {name!r} is already registered for other weights")


def _store_sketch(record: Model, loaded: LoadedModel, device: str) -> None:
    """Compute the model's sketch (from the statistics stored with its files, and one forward
    pass on ``device``) into its record."""
    sketch = model_sketch(loaded, device, outputs=False)
    record.sketch = sketch.to_bytes()
    record.sketch_tensors = [[name, length] for name, length in sketch.keys]
    record.sketch_layout = sketch.layout
    _store_outputs(record, output_sketch(loaded, device))


def _store_outputs(record: Model, part: tuple[str, np.ndarray] | None) -> None:
    """The output part of a sketch (``output_sketch``) into its record; a model without one
    is marked as such (an empty key), so that registering it again does not try again."""
    key, vector = part if part is not None else ("", None)
    record.sketch_outputs_key = key
    record.sketch_outputs = None if vector is None else vector.astype("<f4").tobytes()


def get_by_name(session: Session, name: str) -> Model:
    """The model called ``name``; ``UnknownModel`` if none is."""
    model = ModelRepository(session).by_name(name)
    if model is None:
        raise UnknownModel(f"no model named {name!r} is registered")
    return model


def get_by_id(session: Session, model_id: int | None) -> Model | None:
    """The model with this id, or None (deleted, or no id)."""
    return ModelRepository(session).by_id(model_id) if model_id is not None else None


def promote(session: Session, model_id: int) -> None:
    """Make the model a catalog parent that new children are scored against."""
    model = ModelRepository(session).by_id(model_id)
    if model is not None:
        model.is_candidate = True


def remove_stale_files(factory: sessionmaker[Session], settings: Settings) -> list[str]:
    """Remove the staging and stored folders that failed uploads left behind, once older than
    ``STAGING_MAX_AGE`` (``storage.remove_stale``); the removed folders, relative to storage."""

    def referenced() -> set[str]:
        with factory() as session:
            return ModelRepository(session).all_sha256()

    return remove_stale(settings.storage_dir, referenced, settings.staging_max_age)


@dataclass(frozen=True)
class Candidates:
    """The catalog parents a child is scored against, oldest first, and how many catalog models
    of its architecture there were before the shortlist kept these."""

    models: list[Model]
    catalog_size: int


def candidates(session: Session, child: Model, shortlist_size: int) -> Candidates:
    """The catalog parents ``child`` is scored against, oldest first.

    Filtered in SQL to the child's architecture and to models without one (weights alone may
    still match; a child without an architecture meets every catalog parent). When more than
    ``shortlist_size`` remain (0: no shortlist), only the ``shortlist_size`` whose sketches are
    nearest the child's are kept (``app.engine.sketch``), and those without a sketch. Choosing
    them reads the candidates' ids, compares their sketches (kept by the worker between jobs,
    ``app.registry.shortlist``) in one vectorised pass, and loads the records of those kept.
    """
    repository = ModelRepository(session)
    if shortlist_size <= 0 or child.sketch is None:
        catalog = repository.candidates(child.id, child.architecture)
        return Candidates(catalog, len(catalog))
    ids, catalog_size = shortlist.nearest_ids(session, child, shortlist_size)
    return Candidates(repository.by_ids(ids), catalog_size)


def catalog_names(session: Session, names: list[str]) -> dict[str, str]:
    """Map each of ``names`` that a catalog model carries as its name or hub ID to that model's
    name."""
    found: dict[str, str] = {}
    for model in ModelRepository(session).matching_names_or_hub_ids(names):
        for name in names:
            if name in (model.name, model.hub_id):
                found.setdefault(name, model.name)
    return found


def list_models(session: Session, q: str | None, limit: int, offset: int) -> tuple[list, int]:
    """A page of models whose names contain ``q``, newest first, and how many match."""
    return ModelRepository(session).page(q, limit, offset)


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


# Deleting a model ----------------------------------------------------------------------------


def delete_record(session: Session, model: Model) -> None:
    """Delete ``model``'s row in the caller's transaction, and its stored files once that
    commits (``after_commit``), so a deletion that fails loses nothing. What other domains keep
    about the model (its edges, its jobs) is theirs to clear first: ``detection.delete_model``
    does the whole deletion."""
    sha256, folder = model.sha256, model.storage_path
    ModelRepository(session).delete(model)
    after_commit(session, partial(remove_model_files, folder, sha256))


def remove_model_files(folder: str, sha256: str) -> None:
    """Remove a deleted model's stored folder (``STORAGE_DIR/models/<sha256>``), after its
    deletion committed. A folder already gone is not an error; one that is not where the catalog
    stores these weights is left alone, and a failure to remove is logged, never raised (the
    deletion stands; the folder, committed once and unmarked, stays until removed by hand)."""
    path = Path(folder)
    if path.name != sha256 or path.parent.name != "models":
        log.warning("not removing %s: not the stored folder of weights %s", folder, sha256)
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the files of deleted weights %s: %s", sha256, exc)
