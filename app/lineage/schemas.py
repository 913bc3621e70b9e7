"""Pydantic shapes of the family tree, ``GET /lineage/{name}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

# How much of a family the page browsers get at ``GET /lineage/{name}`` draws by default, and
# at most per level; the route of either representation takes and validates them.
DEFAULT_DEPTH = 3
DEFAULT_WIDTH = 12
MAX_WIDTH = 500
DepthQuery = Annotated[
    int,
    Query(
        ge=1,
        le=256,
        description="HTML page only: generations drawn each way (at most MAX_LINEAGE_DEPTH).",
    ),
]
WidthQuery = Annotated[
    int, Query(ge=1, le=MAX_WIDTH, description="HTML page only: models drawn per level.")
]


class RelativeOut(BaseModel):
    """A model reached by walking edges, ``depth`` edges away (1: a parent or a child)."""

    name: str
    depth: int


class LineageEdge(BaseModel):
    """One parent → child edge with its evidence."""

    parent: str
    child: str
    score: float | None = Field(description="Confidence of the decision that made the edge.")
    method: str | None
    relation: str
    declared: bool = Field(description="Declared by the uploader rather than inferred.")
    scores: dict[str, float | None] | None = Field(description="Every method's score for the pair.")


class FamilyTree(BaseModel):
    """A model's ancestors and descendants (nearest first) and every edge among them."""

    model: str
    ancestors: list[RelativeOut]
    descendants: list[RelativeOut]
    edges: list[LineageEdge]


# No NUL character in the text fields of a body: PostgreSQL text cannot hold one, and the
# driver's refusal was a 500 (found by tests/test_schemathesis.py); now a 422 like any bad field.
NO_NUL = r"^[^\x00]*$"
Reason = Annotated[
    str,
    Field(
        min_length=1, max_length=500, pattern=NO_NUL, description="Why: kept in the graph's log."
    ),
]


class EdgeRequest(BaseModel):
    """``POST /edges``: a curator states parent → child (names may contain ``/``)."""

    model_config = ConfigDict(extra="forbid")

    parent: str = Field(max_length=300, pattern=NO_NUL)
    child: str = Field(max_length=300, pattern=NO_NUL)
    relation: str = Field("finetune", max_length=32, pattern=r"^[a-z_]+$")
    reason: Reason


class GraphEventOut(BaseModel):
    """One entry of the graph's log: a refused edge (``conflict``) or a curator's correction
    (``edge_deleted``, ``edge_set``)."""

    id: int
    kind: str
    parent: str
    child: str
    job_id: str | None = Field(description="The job whose edge was refused (conflicts).")
    key_id: int | None = Field(description="The API key that made the correction.")
    detail: dict | None = Field(description="Reason, the edge before or after, the refusal.")
    created_at: str | None
