"""HTTP endpoints of API keys, for admins: make, list and revoke keys (``lineage keys`` does the
same from the command line)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.auth import service
from app.auth.deps import AdminDep
from app.auth.schemas import CreatedKey, KeyRecord, KeyRequest
from app.core.deps import SessionDep

router = APIRouter(tags=["keys"])

ERRORS = {
    401: {"description": "No API key, or an unknown or revoked one"},
    403: {"description": "The key is not an admin key"},
}


@router.post("/keys", status_code=201, response_model=CreatedKey, responses=ERRORS)
def create_key(_caller: AdminDep, body: KeyRequest, session: SessionDep) -> dict:
    """Make an API key with a role; the answer is the only time the key is shown."""
    record, key = service.create_key(session, body.role, body.name)
    return {**service.key_dict(record), "key": key}


@router.get("/keys", response_model=list[KeyRecord], responses=ERRORS)
def list_keys(_caller: AdminDep, session: SessionDep) -> list[dict]:
    """Every key (revoked ones too), oldest first, without the keys themselves."""
    return [service.key_dict(record) for record in service.list_keys(session)]


@router.delete(
    "/keys/{key_id}",
    response_model=KeyRecord,
    responses={**ERRORS, 404: {"description": "No key has that id"}},
)
def revoke_key(
    key_id: Annotated[int, Path(ge=1, le=2**31 - 1)], _caller: AdminDep, session: SessionDep
) -> dict:
    """Revoke a key: from now on it is answered 401. Its row stays, so the models and jobs it
    created still say who made them."""
    return service.key_dict(service.revoke_key(session, key_id))
