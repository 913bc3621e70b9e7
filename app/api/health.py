"""Operations endpoints: ``/healthz`` for load balancers, ``/metrics`` for Prometheus (the
counters of ``app.core.metrics``, one registry per app)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.engine.errors import LineageError

router = APIRouter(tags=["operations"])


class DatabaseUnavailable(LineageError):
    """The database does not answer (``/healthz``)."""

    code = "database_unavailable"
    status = 503


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
