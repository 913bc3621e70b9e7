"""The FastAPI application: ``create_app(settings, dispatcher)``.

``create_app`` does not migrate: ``lineage serve`` and the tests run ``app.core.db.migrate``
first, so a missing schema is a start-up error rather than something an API process changes
behind the operator's back. Nor does it choose how jobs reach a worker: the caller injects the
dispatcher (``worker.dispatch.dispatcher_for(settings)`` in ``lineage serve``), since the
workers sit above the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session, sessionmaker

from app import __version__
from app.api.errors import install_error_handlers
from app.api.health import router as health_router
from app.api.middleware import (
    JsonBodyLimitMiddleware,
    NulInUrlMiddleware,
    RequestMetricsMiddleware,
    UnexpectedErrorMiddleware,
)
from app.auth import service as auth
from app.auth.deps import read_access
from app.auth.endpoints import router as keys_router
from app.core.config import Settings
from app.core.db import make_engine, session_factory, transaction
from app.core.metrics import Metrics
from app.detection.dispatch import Dispatcher
from app.detection.endpoints import router as detection_router
from app.detection.sweeper import sweep_quietly
from app.lineage.endpoints import router as lineage_router
from app.registry.endpoints import router as registry_router
from app.web.endpoints import router as web_router
from app.web.endpoints import static_files

DESCRIPTION = """
Find which registered model a neural network was fine-tuned from, from its weights alone.

Keep a catalog of base models (`POST /parents`), submit a child model (`POST /detect`): a
worker scores it against every compatible catalog model with weight-space and function-space
methods and decides, with a calibrated confidence, which one is its parent, or that none is.
Follow the job at `GET /jobs/{id}`, browse the family trees at `GET /lineage/{name}`.

Writes need an API key, sent as `Authorization: Bearer <key>`; keys carry a role (reader <
submitter < curator < admin, each including the ones below): `POST /detect` needs submitter,
`POST /parents` and `register_as_parent` curator, `/keys` admin. Reads are public unless the
service sets `REQUIRE_READ_KEY`. A missing, unknown or revoked key is a 401, too low a role a
403, a key over its upload or job limit a 429 with `Retry-After`.

Models are uploaded as their files (`model.safetensors` + `config.json`, the Hugging Face
layout); pickle formats are refused and never unpickled. Every error is
`{"error": {"code": ..., "message": ...}}`.
"""


def create_app(
    settings: Settings, dispatcher: Callable[[sessionmaker[Session]], Dispatcher]
) -> FastAPI:
    """The API on ``settings.database_url`` (already migrated).

    ``dispatcher`` makes, from the app's session factory, what receives each job id once its
    row is committed (e.g. ``InProcessDispatcher``); it is closed at shutdown.
    """
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    if settings.lineage_admin_key is not None:
        with transaction(factory) as session:
            auth.ensure_admin_key(session, settings.lineage_admin_key.get_secret_value())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            app.state.dispatcher.close()
            app.state.engine.dispose()

    app = FastAPI(
        title="lineage",
        description=DESCRIPTION,
        version=__version__,
        lifespan=lifespan,
    )
    metrics = Metrics.create()
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = factory
    app.state.dispatcher = dispatcher(factory)
    app.state.metrics = metrics
    # Jobs a previous process left behind, and files of uploads that never committed: found
    # on every start (and by every worker, periodically).
    sweep_quietly(factory, app.state.dispatcher.enqueue, settings)

    install_error_handlers(app)
    app.add_middleware(JsonBodyLimitMiddleware)  # every route's JSON body: at most 1 MB
    app.add_middleware(NulInUrlMiddleware)  # a NUL in a path or query value: 422, not a 500
    app.add_middleware(UnexpectedErrorMiddleware)
    # Added last, so outermost: it also counts the 500s the error middleware answers.
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    # The pages' routes first: their /lineage route matches only requests that prefer HTML and
    # leaves the others to the JSON route of the lineage router.
    # Reads are public unless REQUIRE_READ_KEY; writes check their own role (app.auth.deps).
    # Health and metrics stay open to the probes that watch the service.
    for router in (web_router, registry_router, detection_router, lineage_router, keys_router):
        app.include_router(router, dependencies=[Depends(read_access)])
    app.include_router(health_router)
    app.mount("/static", static_files(), name="static")
    return app
