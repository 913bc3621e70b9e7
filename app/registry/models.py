"""The ``models`` table: one row per distinct set of weights (a node of the lineage graph)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.auth.models import ApiKey
from app.core.db import Base, utcnow


class Model(Base):
    """A registered model. ``sha256`` (of the weight bytes) is its identity: the same weights
    registered twice are one row. ``name`` is what people call it (``org/name`` for hub models,
    which also carry the resolved ``revision`` commit). ``is_candidate``: whether it is in the
    parent catalog that new children are scored against. ``sketch*``: what shortlists it as a
    candidate without opening its files (loaded only when asked for)."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    hub_id: Mapped[str | None] = mapped_column(String(300))
    revision: Mapped[str | None] = mapped_column(String(64))
    architecture: Mapped[str | None] = mapped_column(String(100), index=True)
    config: Mapped[dict | None] = mapped_column(JSON)
    num_bytes: Mapped[int] = mapped_column(BigInteger)
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    storage_path: Mapped[str] = mapped_column(String(500))
    is_candidate: Mapped[bool] = mapped_column(Boolean, default=False)
    # The sketch (``app.engine.sketch``): float32 rows, the (tensor, length) of each row, and the
    # digest of that list, which models of one architecture share; then the output part (float32)
    # and the key it is compared under: NULL when not computed yet (registered before output
    # parts existed), "" (and no output part) when the model has none (weights only, say).
    sketch: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    sketch_tensors: Mapped[list | None] = mapped_column(JSON, deferred=True)
    sketch_layout: Mapped[str | None] = mapped_column(String(32), index=True, deferred=True)
    sketch_outputs: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    sketch_outputs_key: Mapped[str | None] = mapped_column(String(32), deferred=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The API key that registered it: its owner, who alone (with curators) may declare its
    # parents. NULL: registered without a key (command line, benchmark, before keys existed).
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey(ApiKey.id, ondelete="SET NULL"), default=None
    )
