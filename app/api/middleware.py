"""The API's ASGI middleware: request counting, the JSON body limit, the refusal of NUL
characters in URLs, and the last-resort answer to a bug.

Plain ASGI middleware rather than ``BaseHTTPMiddleware`` or an ``Exception`` handler: they see
every answer, the 500s included, and never buffer a streamed body.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import describe_validation_errors, error_response
from app.core.deps import MAX_JSON_BODY_BYTES, BodyTooLarge
from app.core.metrics import Metrics

log = logging.getLogger(__name__)


class RequestMetricsMiddleware:
    """Count every answered request by its route template (``/models/{name:path}``, so the
    label set stays small however many names there are) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers if the app raises before starting a response

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()


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


class JsonBodyLimitMiddleware:
    """Refuse a JSON request body above ``MAX_JSON_BODY_BYTES`` (1 MB) with 413
    ``request_too_large``, on every route: the model endpoints read theirs through
    ``app.core.deps.read_json_body`` (which also limits its depth), but routes whose body FastAPI
    parses itself would otherwise read any size into memory. A declared ``Content-Length`` over
    the cap is answered before anything is read; a chunked body once it passes the cap.
    Multipart uploads are left to their own limit (``MAX_MODEL_BYTES``)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_JSON_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        refusal = f"JSON body is above the limit of {self.limit} bytes"
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = error_response(BodyTooLarge.status, BodyTooLarge.code, refusal)
            await response(scope, receive, send)
            return
        # Read whole (at most the cap) before the app sees it: a refusal raised from inside its
        # body parsing would be taken for an empty body.
        chunks, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            more = message.get("more_body", False)
            if received > self.limit:
                response = error_response(BodyTooLarge.status, BodyTooLarge.code, refusal)
                await response(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def _is_json(scope: Scope) -> bool:
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
    media_type = content_type.split(b";")[0].strip().lower()
    return media_type == b"application/json" or media_type.endswith(b"+json")


class NulInUrlMiddleware:
    """Refuse a request whose path or query string carries a NUL character (``%00``) with 422
    ``invalid_request``, before any route sees it.

    PostgreSQL text cannot hold NUL: a name or a query value with one reached the database as a
    driver ``DataError``, a 500, on every route that looks a name up (``GET /models/{name}``,
    ``/lineage/{name}``, ``/jobs/{id}``, ``GET /models?q=``, ``DELETE /edges``, the pages; found
    by tests/test_schemathesis.py). No name, id or query value of the service can contain one, so
    refusing it here covers every route, those to come included. (JSON bodies are checked by
    their schemas.)"""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fields = []
        if "\x00" in scope.get("path", ""):  # already percent-decoded
            fields.append("path")
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            fields += [name for name, value in pairs if "\x00" in name + value] or ["query"]
        if not fields:
            await self.app(scope, receive, send)
            return
        message, details = describe_validation_errors(
            [{"loc": ("url", field), "msg": "NUL characters are not allowed"} for field in fields]
        )
        response = error_response(422, "invalid_request", message, details=details)
        await response(scope, receive, send)
