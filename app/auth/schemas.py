"""Pydantic shapes of the keys' HTTP interface (``/keys``, admin only)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RoleName = Literal["reader", "submitter", "curator", "admin"]


class KeyRequest(BaseModel):
    """``POST /keys``: the role of the new key and an optional name for people."""

    model_config = ConfigDict(extra="forbid")

    role: RoleName
    # No NUL: PostgreSQL text cannot hold one; it was a 500 (found by tests/test_schemathesis.py).
    name: str | None = Field(
        None, max_length=100, pattern=r"^[^\x00]*$", description="Whose key, or what for."
    )


class KeyRecord(BaseModel):
    """A key as listed: never the key itself, nor its hash."""

    id: int
    name: str | None
    role: RoleName
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: str | None
    revoked_at: str | None


class CreatedKey(KeyRecord):
    """A new key: the only answer that carries the key itself (store it now)."""

    key: str
