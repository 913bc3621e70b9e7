"""Pydantic shapes of the catalog's HTTP interface: what ``/parents`` and ``/models`` accept and
return. The records themselves are built by ``app.registry.service.to_dict``."""

from __future__ import annotations

from typing import Annotated, BinaryIO

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.registry.service import HubReference, ModelSource, Upload

# Hub-style names: ``name`` or ``org/name`` (more segments allowed); every segment starts with a
# letter, digit or underscore, so there are no empty, ``.`` or ``..`` segments and no spaces.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$"

ModelName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=300, pattern=NAME_PATTERN),
    Field(description="A model's name, e.g. `org/name` (letters, digits, `_`, `.`, `-`, `/`)."),
]

# Paging stops here: far beyond any catalog, and within every database's integers (an offset
# past 2**63 was a 500 from the database driver).
MAX_OFFSET = 10**9
LimitQuery = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
OffsetQuery = Annotated[
    int, Query(ge=0, le=MAX_OFFSET, description="Items to skip (at most 1,000,000,000).")
]


class ModelRecord(BaseModel):
    """A registered model: one distinct set of weights (a node of the lineage graph)."""

    name: str
    sha256: str = Field(description="SHA-256 of the weight bytes: the model's identity.")
    hub_id: str | None = None
    revision: str | None = Field(None, description="Resolved commit of a hub model.")
    architecture: str | None = Field(None, description="`model_type` from its config.json.")
    num_parameters: int
    num_bytes: int
    is_candidate: bool = Field(description="Whether new children are scored against it.")
    created_at: str | None = None


class RegisteredModel(ModelRecord):
    """The answer to ``POST /parents``: the record, and whether this request created it."""

    created: bool = Field(
        description="False when the same weights were already registered (the existing record)."
    )
    notice: str | None = Field(
        None,
        description="When the weights were already registered: under which name (the record is "
        "never renamed by a later upload), and whether another key registered them.",
    )


class ParentEdge(BaseModel):
    """An edge into a model, seen from the child."""

    parent: str
    score: float | None
    method: str | None
    relation: str
    declared: bool


class ModelDetail(ModelRecord):
    """A model with its direct family: the edges into it and its children's names."""

    parents: list[ParentEdge]
    children: list[str]


class ModelPage(BaseModel):
    """One page of ``GET /models``, newest first."""

    models: list[ModelRecord]
    total: int = Field(description="How many models match the filter, over all pages.")
    limit: int
    offset: int


class DeletedModel(BaseModel):
    """The answer to ``DELETE /models/{name}``: what went with the model."""

    name: str
    sha256: str
    edges_removed: int = Field(
        description="Edges into or out of the model, removed; each is in `GET /graph/log`."
    )
    jobs_failed: int = Field(
        description="Its queued or running jobs, now failed with `unknown_model` (every job "
        "keeps its row, without the model)."
    )


class ParentUpload(BaseModel):
    """The text fields of a multipart ``POST /parents`` (the files come in ``files``)."""

    model_config = ConfigDict(extra="forbid")

    name: ModelName


class HubModelRequest(BaseModel):
    """A model named by its hub ID instead of uploaded."""

    model_config = ConfigDict(extra="forbid")

    hub_id: ModelName = Field(description="Hugging Face hub ID, e.g. `org/name`.")
    revision: str | None = Field(
        None, max_length=100, description="Branch, tag or commit; resolved to a commit hash."
    )


def model_source(fields: BaseModel, uploads: list[tuple[str | None, BinaryIO]]) -> ModelSource:
    """What a parsed ``POST /parents`` or ``POST /detect`` body names: the hub model of a JSON
    body (``HubModelRequest`` or a subclass), else the uploaded files."""
    if isinstance(fields, HubModelRequest):
        return HubReference(fields.hub_id, fields.revision)
    return Upload(uploads)
