"""Choosing a child's shortlist among the catalog's stored sketches, with the worker's copy of
them (``app.engine.sketch.SketchIndex``) kept between jobs.

Each job reads which models are candidates now (ids, SHA-256 and sketch layout: no sketch), reads
the sketches of only those its process has not kept yet, and compares the child's sketch with
every candidate's in one vectorised pass. A catalog of 10,000 models then costs one light query
and a matrix difference per job instead of reading 10,000 sketches; sketches beyond the index's
memory bound are compared as they are read (``SketchScan``), as before.
"""

from __future__ import annotations

import threading

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.engine.sketch import Sketch, SketchIndex, SketchScan, nearest, stored_keys
from app.registry.models import Model
from app.registry.repository import ModelRepository

_INDEXES: dict[str, tuple[str, SketchIndex]] = {}  # database URL → (its generation, index)
_LOCK = threading.Lock()


def index_for(session: Session) -> SketchIndex:
    """This process's index of the sketches of the database ``session`` is bound to. A database
    recreated under the same URL (as tests do) is told apart by its first model's registration
    time, and gets a new index."""
    url = session.get_bind().url.render_as_string(hide_password=True)
    first = session.execute(select(Model.id, Model.created_at).order_by(Model.id).limit(1)).first()
    generation = "" if first is None else f"{first.id}:{first.created_at}"
    with _LOCK:
        kept = _INDEXES.get(url)
        if kept is None or kept[0] != generation:
            kept = _INDEXES[url] = (generation, SketchIndex())
        return kept[1]


def forget_indexes() -> None:
    """Drop every kept sketch (a worker's first job then reads them all again)."""
    with _LOCK:
        _INDEXES.clear()


def nearest_ids(session: Session, child: Model, size: int) -> tuple[list[int], int]:
    """(the ids of the ``size`` catalog models whose sketches are nearest ``child``'s, and every
    catalog model without a sketch, oldest first; how many catalog models of the child's
    architecture there are). Every catalog model when there are ``size`` or fewer."""
    repository = ModelRepository(session)
    rows = repository.candidate_summaries(child.id, child.architecture)
    if len(rows) <= size:
        return sorted(row.id for row in rows), len(rows)
    index = index_for(session)
    with _LOCK:  # one job at a time reads and extends the index
        layouts = {row.sketch_layout for row in rows} - {None}
        unknown = (layouts | {child.sketch_layout}) - index.keys.keys()
        for layout, keys in repository.sketch_layouts(unknown).items():
            index.keys[layout] = stored_keys(keys)
        own = Sketch.from_stored(
            index.keys[child.sketch_layout],
            child.sketch,
            child.sketch_layout,
            child.sketch_outputs,
            child.sketch_outputs_key,
        )
        # columns, not rows: attribute access on 10,000 rows costs more than the comparison
        model_ids, digests, row_layouts, output_keys = zip(*rows, strict=True)
        missing = [
            model_id
            for model_id, sha256, layout, outputs_key in zip(
                model_ids, digests, row_layouts, output_keys, strict=True
            )
            if layout in index.keys and not index.has(model_id, sha256, outputs_key)
        ]
        aside = _read_missing(repository, index, missing)
        present = np.array(
            [
                layout is not None and not index.misfit(model_id, sha256)
                for model_id, sha256, layout in zip(model_ids, digests, row_layouts, strict=True)
            ]
        )
        ids = np.array(model_ids, dtype=np.int64)
        wanted = present & ~np.isin(ids, list(aside))
        distances = index.distances(own, ids, wanted)
    if aside:  # beyond the index's bound: compared as read, the same way
        position = {int(model_id): i for i, model_id in enumerate(ids)}
        scan = SketchScan(own, dict(index.keys))
        for model_id, (layout, data, outputs_key, outputs) in aside.items():
            scan.add(position[model_id], layout, data, outputs_key, outputs)
        more, fits = scan.finish(len(rows))
        chosen = [position[model_id] for model_id in aside]
        distances[chosen] = more[chosen]
        present[chosen] = fits[chosen]
    oldest_first = np.argsort(ids, kind="stable")  # ties go to the oldest, as in a list
    picked = nearest(distances[oldest_first], present[oldest_first], size)
    return sorted(int(ids[oldest_first[i]]) for i in picked), len(rows)


def _read_missing(
    repository: ModelRepository, index: SketchIndex, ids: list[int]
) -> dict[int, tuple]:
    """Read the sketches of models ``ids`` into ``index``; those it has no room for are
    returned, id → (layout, sketch, outputs key, outputs), to be compared as read."""
    aside: dict[int, tuple] = {}
    for model_id, sha256, layout, data, outputs_key, outputs in repository.sketches(ids):
        if data is None:
            continue
        if not index.add(model_id, sha256, layout, data, outputs_key, outputs):
            aside[model_id] = (layout, data, outputs_key, outputs)
    return aside
