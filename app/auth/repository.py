"""All SQL of access control: keys and rate windows (the caller's session commits)."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.auth.models import ApiKey, RateWindow


class KeyRepository:
    """Reads and writes of API keys and their rate windows within the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, key: ApiKey) -> ApiKey:
        """Insert ``key`` (flushed, so it has its id)."""
        self.session.add(key)
        self.session.flush()
        return key

    def by_hash(self, key_hash: str) -> ApiKey | None:
        """The key whose SHA-256 is ``key_hash``, revoked or not."""
        return self.session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()

    def by_id(self, key_id: int) -> ApiKey | None:
        """The key with this id, if any."""
        return self.session.get(ApiKey, key_id)

    def all(self) -> list[ApiKey]:
        """Every key, oldest first."""
        return list(self.session.scalars(select(ApiKey).order_by(ApiKey.id)))

    def count_active(self) -> int:
        """How many keys are not revoked."""
        query = select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
        return self.session.scalar(query) or 0

    def count_use(self, key_id: int, action: str, window_start: int) -> int:
        """Count one more ``action`` by the key in the window starting at ``window_start`` and
        return the window's count so far (this one included), in one atomic upsert; the key's
        older windows of that action are dropped."""
        self.session.execute(
            delete(RateWindow).where(
                RateWindow.key_id == key_id,
                RateWindow.action == action,
                RateWindow.window_start < window_start,
            )
        )
        dialect = self.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(RateWindow).values(
            key_id=key_id, action=action, window_start=window_start, count=1
        )
        statement = statement.on_conflict_do_update(
            index_elements=["key_id", "action", "window_start"],
            set_={"count": RateWindow.count + 1},
        ).returning(RateWindow.count)
        return self.session.execute(statement).scalar_one()
