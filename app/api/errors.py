"""Every HTTP error in one shape, ``{"error": {"code": ..., "message": ...}}``, decided here.

Errors are types raised where the fault is found (``LineageError`` subclasses), each carrying its
stable ``code`` and its HTTP ``status`` (400 unless the type says otherwise), so this module maps
them without knowing any domain. Bad input is always a 4xx: the engine's and the domains' errors,
request validation (422), and Starlette's own 404/405/413. Anything else is a bug, answered by
``app.api.middleware.UnexpectedErrorMiddleware`` with a logged 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.core.db import DATABASE_UNAVAILABLE
from app.engine.errors import LineageError

log = logging.getLogger(__name__)

# Codes of Starlette's own HTTP errors (unknown route, wrong method, body over the limit...).
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    """The one error shape: ``{"error": {"code", "message", ...extra}}``."""
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


def describe_validation_errors(errors: list[dict]) -> tuple[str, list[dict]]:
    """A readable message (``name: Field required; limit: ...``) and per-field details.

    The location's first element says where (body, query, path); it is dropped from the field
    name because clients know a field by its name. Only strings go out: pydantic's ``ctx`` may
    hold exception objects, which are not JSON.
    """
    details = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        field = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "request")
        message = str(error.get("msg", "invalid value"))
        ctx_error = (error.get("ctx") or {}).get("error")
        if error.get("type") == "json_invalid" and ctx_error:
            field, message = "body", f"malformed JSON: {ctx_error}"
        details.append({"field": field, "message": message})
    text = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "invalid request"
    return text, details


async def _lineage_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LineageError)
    # Some errors carry the headers their status needs (WWW-Authenticate on a 401, Retry-After
    # on a 429).
    return error_response(exc.status, exc.code, exc.message, headers=getattr(exc, "headers", None))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, details = describe_validation_errors(list(exc.errors()))
    return error_response(422, "invalid_request", message, details=details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI answers a JSON body that is not UTF-8 with a bare 400 "There was an error
        # parsing the body", which no route documents (found by tests/test_schemathesis.py on
        # POST /keys and POST /edges). It is malformed JSON: answered as the model endpoints
        # (app.core.deps.read_json_body) and FastAPI's own JSON errors are, 422 invalid_request.
        malformed = {
            "type": "json_invalid",
            "loc": ("body",),
            "msg": f"malformed JSON: {exc.__cause__}",
        }
        return await _validation_error(request, RequestValidationError([malformed]))
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, headers=exc.headers)


# Seconds a client is told to wait before trying again while the database does not answer.
DATABASE_RETRY_AFTER = 5


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """The database cannot be reached (refused, dropped, timed out, pool exhausted): a 503 a
    client can retry, on every endpoint, rather than a 500. The driver's message (hosts,
    ports) is logged by the server, not sent."""
    log.warning("database unavailable: %s", exc)
    return error_response(
        503,
        "database_unavailable",
        "the database does not answer; nothing was changed, try again shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers of ``LineageError``, request validation, Starlette's errors and
    a database that cannot be reached (503 ``database_unavailable``)."""
    app.add_exception_handler(LineageError, _lineage_error)
    for fault in DATABASE_UNAVAILABLE:  # app.core.db says which faults these are
        app.add_exception_handler(fault, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
