"""Alembic environment: runs migrations online against the URL set by ``app.core.db``."""

from __future__ import annotations

from alembic import context

from app.core.db import Base, make_engine
from app.detection import models as _jobs  # noqa: F401  (tables register on Base)
from app.lineage import models as _edges  # noqa: F401
from app.registry import models as _models  # noqa: F401

target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=url.startswith("sqlite"),  # SQLite alters tables by copying them
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run them online")
run_migrations_online()
