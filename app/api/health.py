"""Operations endpoints: ``/healthz`` for load balancers, ``/metrics`` for Prometheus.

Metrics live in a ``CollectorRegistry`` of their own per app (not prometheus_client's global
one), so several apps in one process, as in the tests, count separately and never clash.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import DatabaseUnavailable

router = APIRouter(tags=["operations"])


@dataclass(frozen=True)
class Metrics:
    """The service's counters, registered in ``registry``."""

    registry: CollectorRegistry
    requests: Counter
    jobs_created: Counter
    models_registered: Counter

    @classmethod
    def create(cls) -> Metrics:
        """Fresh counters in a fresh registry."""
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "lineage_http_requests",
                "HTTP requests answered, by route template, method and status.",
                ["endpoint", "method", "status"],
                registry=registry,
            ),
            jobs_created=Counter(
                "lineage_jobs_created", "Detection jobs created.", registry=registry
            ),
            models_registered=Counter(
                "lineage_models_registered",
                "Models newly added to the catalog, by role (parent or detected child).",
                ["role"],
                registry=registry,
            ),
        )


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


class Health(BaseModel):
    """The service and its database answer."""

    status: str
    database: str


@router.get("/healthz", response_model=Health, summary="Liveness and database check")
def healthz(request: Request) -> dict:
    """``{"status": "ok", "database": "ok"}`` once the database answers ``SELECT 1``; 503 with
    the error shape when it does not."""
    # A connection of its own rather than the request session: nothing to commit, and a pool
    # check-out is exactly what a failing database breaks first.
    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        # The driver's message names the host or file, which is what an operator needs.
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise DatabaseUnavailable(f"the database does not answer: {reason}") from None
    return {"status": "ok", "database": "ok"}


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
def metrics(request: Request) -> Response:
    """Counters in the Prometheus text format: requests by endpoint and status
    (``lineage_http_requests_total``), jobs created, models registered."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
