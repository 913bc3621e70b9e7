"""The database: declarative base, engines, sessions, and migrations (the only way to a schema).

One code path for both back ends. SQLite (the embedded default) gets foreign keys switched on,
WAL journalling, and transactions that take the write lock when they begin, so the API and the
in-process worker queue for it instead of failing; PostgreSQL gets
pre-pinged pooled connections. ``migrate(url)`` runs Alembic's ``upgrade head`` programmatically;
tests make their schema the same way.

``after_commit(session, callback)``: work that must happen only once the caller's transaction has
committed (a job handed to the workers must find its row), registered by a service that never
commits itself; dropped when the transaction rolls back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sql
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
_AFTER_COMMIT = "lineage.after_commit"

# The database is away, not the request wrong: the connection was refused or dropped
# (OperationalError), closed under us (InterfaceError), or none came free from the pool
# (TimeoutError). The API answers these with 503; workers retry them.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sql.OperationalError,
    sql.InterfaceError,
    sql.TimeoutError,
)


class Base(DeclarativeBase):
    """Declarative base of every table."""


def utcnow() -> datetime:
    """Timezone-aware now, for created/updated columns."""
    return datetime.now(UTC)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a SQLite file's folder is created if missing."""
    if is_sqlite(url):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # We issue BEGIN ourselves (below), not the sqlite3 module.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection):
            # Take SQLite's single write lock when the transaction starts (waiting up to the
            # timeout for it). A deferred transaction that read first and writes later fails at
            # once with "database is locked" when another writer committed in between, which the
            # API and the in-process worker would do all the time.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that never expire loaded objects on commit (results outlive the session)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits at the end of the block, or rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` when ``session``'s transaction commits; forget it if it rolls back.

    Callbacks run in order, after the data is durable; an exception they raise comes out of
    ``session.commit()`` (the commit itself stands).
    """
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop(_AFTER_COMMIT, []):
        callback()


@event.listens_for(Session, "after_transaction_end")
def _forget_after_rollback(session: Session, transaction) -> None:
    # The outermost transaction ended without a commit (after a commit the list is gone already):
    # what it would have handed on must not leak into the session's next transaction.
    if transaction.parent is None:
        session.info.pop(_AFTER_COMMIT, None)


def alembic_config(url: str):
    """Alembic's configuration for ``url``, pointing at the project's migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default: the newest schema)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Take the database at ``url`` back to ``revision`` (default: empty)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)
