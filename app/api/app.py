"""The FastAPI application: ``create_app(settings, dispatcher)``.

``create_app`` does not migrate: ``lineage serve`` and the tests run ``app.core.db.migrate``
first, so a missing schema is a start-up error rather than something an API process changes
behind the operator's back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.errors import install_error_handlers
from app.api.health import Metrics, RequestMetricsMiddleware
from app.api.health import router as health_router
from app.core.config import Settings, get_settings
from app.core.db import make_engine, session_factory
from app.detection.dispatch import Dispatcher
from app.detection.endpoints import router as detection_router
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

Models are uploaded as their files (`model.safetensors` + `config.json`, the Hugging Face
layout); pickle formats are refused and never unpickled. Every error is
`{"error": {"code": ..., "message": ...}}`.
"""


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    """The API on ``settings.database_url`` (already migrated).

    ``dispatcher`` receives each job id once its row is committed; by default the in-process
    worker without ``REDIS_URL``, Celery through Redis with it. It is closed at shutdown.
    """
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    if dispatcher is None:
        from app.detection.dispatch import CeleryDispatcher, InProcessDispatcher

        if settings.redis_url is None:
            dispatcher = InProcessDispatcher(factory, device=settings.device)
        else:
            dispatcher = CeleryDispatcher(settings.redis_url)

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
    app.state.dispatcher = dispatcher
    app.state.metrics = metrics

    install_error_handlers(app)
    # Added last, so outermost: it also counts the 500s the error middleware answers.
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    for router in (registry_router, detection_router, lineage_router, health_router, web_router):
        app.include_router(router)
    app.mount("/static", static_files(), name="static")
    return app
