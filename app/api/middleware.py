"""The API's ASGI middleware: request counting, and the last-resort answer to a bug.

Plain ASGI middleware rather than ``BaseHTTPMiddleware`` or an ``Exception`` handler: they see
every answer, the 500s included, and never buffer a streamed body.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
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
