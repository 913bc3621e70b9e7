"""Errors of access control, raised where the fault is found. Each carries the headers its HTTP
answer needs (``WWW-Authenticate``, ``Retry-After``); ``app.api.errors`` sends them."""

from __future__ import annotations

from app.engine.errors import LineageError


class Unauthenticated(LineageError):
    """No API key, or one that is unknown or revoked, where a role is needed."""

    code = "unauthenticated"
    status = 401

    def __init__(self, message: str):
        super().__init__(message)
        self.headers = {"WWW-Authenticate": 'Bearer realm="lineage"'}


class Forbidden(LineageError):
    """A valid key whose role is too low for what it asked."""

    code = "forbidden"
    status = 403


class RateLimited(LineageError):
    """A key that used up its uploads or jobs for the current window."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class UnknownKey(LineageError):
    """No API key has that id."""

    code = "unknown_key"
    status = 404


class WeakKey(LineageError):
    """A key chosen by the operator (``LINEAGE_ADMIN_KEY``) too short to be a secret."""

    code = "weak_key"


class InvalidRole(LineageError):
    """A role name that is not reader, submitter, curator or admin."""

    code = "invalid_role"
