"""Every HTTP error in one shape, ``{"error": {"code": ..., "message": ...}}``, decided here.

Errors are types raised where the fault is found (``LineageError`` subclasses, each with a stable
``code``); this module alone turns them into statuses. Bad input is always a 4xx: the engine's and
the catalog's errors (400 unless listed in ``STATUS``), request validation (422), and Starlette's
own 404/405/413. Anything else is a bug: logged with its traceback and answered with a 500
``internal`` error that reveals nothing of the exception.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.detection.errors import UnknownJob
from app.engine.errors import LineageError, ModelTooLarge
from app.hub.resolve import GatedHubModel, HubOffline, UnknownHubModel
from app.lineage.errors import CycleRefused
from app.registry.errors import NameTaken, UnknownModel

log = logging.getLogger(__name__)


# Errors found at the HTTP edge itself.
class UnsupportedMediaType(LineageError):
    """A request body that is neither multipart/form-data nor JSON."""

    code = "unsupported_media_type"


class DatabaseUnavailable(LineageError):
    """The database does not answer (``/healthz``)."""

    code = "database_unavailable"


class QueueUnavailable(LineageError):
    """A job was stored but could not be handed to the workers (the broker is down)."""

    code = "queue_unavailable"


# Status of each error type; a subclass inherits its nearest listed ancestor's, else 400.
STATUS: dict[type[LineageError], int] = {
    UnknownModel: 404,
    UnknownJob: 404,
    UnknownHubModel: 404,
    GatedHubModel: 403,
    HubOffline: 503,
    NameTaken: 409,
    CycleRefused: 409,
    ModelTooLarge: 413,
    UnsupportedMediaType: 415,
    DatabaseUnavailable: 503,
    QueueUnavailable: 503,
}

# Codes of Starlette's own HTTP errors (unknown route, wrong method, body over the limit...).
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def status_of(exc: LineageError) -> int:
    """The HTTP status of a ``LineageError``: its type's (or nearest ancestor's) in ``STATUS``."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


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
    return error_response(status_of(exc), exc.code, exc.message)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, details = describe_validation_errors(list(exc.errors()))
    return error_response(422, "invalid_request", message, details=details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers and the last-resort 500 middleware on ``app``."""
    app.add_exception_handler(LineageError, _lineage_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(UnexpectedErrorMiddleware)


class UnexpectedErrorMiddleware:
    """Turn an exception no handler knew into a logged 500 ``internal`` error.

    A plain ASGI middleware rather than an ``Exception`` handler: Starlette runs that handler in
    its outermost middleware and re-raises afterwards, so the error would be logged twice and
    request metrics (installed outside this middleware) would never see the 500.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except HTTPException:
            raise  # Starlette's own 4xx signals are not bugs; their handler answers them
        except Exception:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for another answer; the server drops the connection
                raise
            response = error_response(
                500, "internal", "internal error; it has been logged for the operators"
            )
            await response(scope, receive, send)
