"""The ``api_keys`` table (who may do what) and ``rate_windows`` (what each key used lately)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, utcnow


class ApiKey(Base):
    """An API key. Only ``key_hash`` (SHA-256 of the key, hex) is stored, never the key;
    ``prefix`` (its first characters) lets people tell their keys apart in a list. A revoked
    key keeps its row, so the models and jobs it created still say who made them."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RateWindow(Base):
    """How many times a key did ``action`` (``upload``, ``job``) in the fixed window starting at
    ``window_start`` (Unix seconds, a multiple of the window's length)."""

    __tablename__ = "rate_windows"

    key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    action: Mapped[str] = mapped_column(String(16), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
