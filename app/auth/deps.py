"""Request dependencies of access control: who is calling, and may they.

``require(role, *actions)`` makes the dependency of an endpoint that needs ``role``: it reads
``Authorization: Bearer <key>``, finds the key (401 when missing, unknown or revoked), checks the
role (403) and counts the request against the key's limits for ``actions`` (429). It runs before
the endpoint reads a body (declare it first), in its own short transaction: a refused request
uploads nothing, and on SQLite the request's own session does not hold the write lock while a
body streams in. ``read_access`` guards the reads, only when ``REQUIRE_READ_KEY`` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import service
from app.auth.service import Caller, Role
from app.core.config import Settings
from app.core.db import transaction

bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `Authorization: Bearer <key>` (`lineage keys create --role ROLE`).",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _limit(settings: Settings, action: str) -> int:
    return {"upload": settings.rate_limit_uploads, "job": settings.rate_limit_jobs}[action]


def require(role: Role, *actions: str, what: str | None = None) -> Callable[..., Caller]:
    """The dependency of an endpoint that needs ``role`` and counts as ``actions``."""

    def caller(request: Request, credentials: BearerDep) -> Caller:
        settings: Settings = request.app.state.settings
        asked = what or f"{request.method} {request.url.path}"
        with transaction(request.app.state.session_factory) as session:
            found = service.authenticate(session, credentials.credentials if credentials else None)
            service.authorize(found, role, asked)
            for action in actions:
                service.count_use(
                    session, found, action, _limit(settings, action), settings.rate_limit_window
                )
        return found

    return caller


def read_access(request: Request, credentials: BearerDep) -> Caller | None:
    """Reads (GET, HEAD) need a ``reader`` key when ``REQUIRE_READ_KEY`` is set, and nothing
    otherwise; other methods are left to their endpoint's own ``require``."""
    settings: Settings = request.app.state.settings
    if not settings.require_read_key or request.method not in ("GET", "HEAD"):
        return None
    return require(Role.READER)(request, credentials)


SubmitterDep = Annotated[Caller, Depends(require(Role.SUBMITTER, "upload", "job"))]
CuratorUploadDep = Annotated[Caller, Depends(require(Role.CURATOR, "upload"))]
AdminDep = Annotated[Caller, Depends(require(Role.ADMIN))]
