"""Access control's logic: making, listing and revoking API keys, recognising the key a request
carries, checking its role, and counting its uploads and jobs. No HTTP and no commit here.

Keys are ``lin_`` + 32 random bytes (URL-safe base64): 256 bits from ``secrets``. Only their
SHA-256 is stored. A fast hash is enough for keys this random (unlike passwords, there is no
dictionary to try: inverting SHA-256 of 256 random bits is out of reach), and it lets a request's
key be found by an indexed lookup of its hash, with no per-request key-stretching cost. Keys an
operator chooses (``LINEAGE_ADMIN_KEY``) must be at least ``MIN_CHOSEN_KEY_LENGTH`` characters.

Roles are ordered: each includes the ones below it.
- ``reader``: reads (only needed when ``REQUIRE_READ_KEY`` is set; reads are public otherwise);
- ``submitter``: ``POST /detect`` (a job on a child it uploads);
- ``curator``: ``POST /parents``, promoting a model to a catalog parent (``register_as_parent``),
  declared edges on models it does not own, graph corrections;
- ``admin``: keys (``/keys``, ``lineage keys``) and deletions.

Rate limits are fixed windows counted in the database (``rate_windows``), so every API process
of a deployment shares them and a restart does not reset them; one upsert per counted request.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.orm import Session

from app.auth.errors import (
    Forbidden,
    InvalidRole,
    RateLimited,
    Unauthenticated,
    UnknownKey,
    WeakKey,
)
from app.auth.models import ApiKey
from app.auth.repository import KeyRepository
from app.core.db import utcnow

KEY_PREFIX = "lin_"
SHOWN_PREFIX_LENGTH = 12  # "lin_" + 8 characters: enough to tell keys apart, useless to guess
MIN_CHOSEN_KEY_LENGTH = 24
ENV_ADMIN_KEY_NAME = "LINEAGE_ADMIN_KEY"


class Role(StrEnum):
    """What a key may do; each role includes the ones below it."""

    READER = "reader"
    SUBMITTER = "submitter"
    CURATOR = "curator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Its place in the order reader < submitter < curator < admin."""
        return list(Role).index(self)


ROLES = tuple(role.value for role in Role)


@dataclass(frozen=True)
class Caller:
    """The key a request came with: its id, name and role (never the key itself)."""

    id: int
    name: str | None
    role: Role

    def has(self, role: Role) -> bool:
        """Whether this caller's role includes ``role``."""
        return self.role.rank >= role.rank


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256 of its UTF-8 bytes, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh key: ``lin_`` + 256 random bits, URL-safe base64 (43 characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_role(value: str) -> Role:
    """``value`` as a role; ``InvalidRole`` listing the roles otherwise."""
    try:
        return Role(value)
    except ValueError:
        raise InvalidRole(f"unknown role {value!r}; choose one of {', '.join(ROLES)}") from None


def create_key(session: Session, role: Role | str, name: str | None = None) -> tuple[ApiKey, str]:
    """Make a key with ``role``: (its record, the key). The key is returned this once and never
    stored; only its hash is."""
    key = new_key()
    record = ApiKey(
        name=name, role=parse_role(role), key_hash=hash_key(key), prefix=key[:SHOWN_PREFIX_LENGTH]
    )
    return KeyRepository(session).add(record), key


def ensure_admin_key(session: Session, key: str, name: str = ENV_ADMIN_KEY_NAME) -> ApiKey:
    """Make ``key`` (chosen by the operator) an active admin key: created if new, or restored to
    admin and un-revoked if it exists. ``WeakKey`` when it is too short to be a secret."""
    if len(key) < MIN_CHOSEN_KEY_LENGTH:
        raise WeakKey(
            f"{name} must be at least {MIN_CHOSEN_KEY_LENGTH} characters (use `lineage keys "
            "create` or `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    repository = KeyRepository(session)
    record = repository.by_hash(hash_key(key))
    if record is None:
        shown = key[:4] + "…" if not key.startswith(KEY_PREFIX) else key[:SHOWN_PREFIX_LENGTH]
        return repository.add(
            ApiKey(name=name, role=Role.ADMIN, key_hash=hash_key(key), prefix=shown)
        )
    record.role, record.revoked_at = Role.ADMIN, None
    return record


def has_active_keys(session: Session) -> bool:
    """Whether any key is not revoked."""
    return KeyRepository(session).count_active() > 0


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, oldest first, revoked ones included."""
    return KeyRepository(session).all()


def revoke_key(session: Session, key_id: int) -> ApiKey:
    """Revoke the key with this id (from now on it is refused with 401); revoking twice keeps
    the first time. ``UnknownKey`` if no key has that id."""
    record = KeyRepository(session).by_id(key_id)
    if record is None:
        raise UnknownKey(f"no API key with id {key_id}")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    return record


def authenticate(session: Session, presented: str | None) -> Caller:
    """The caller a presented key belongs to; ``Unauthenticated`` when there is none, or it is
    unknown or revoked."""
    if not presented:
        raise Unauthenticated(
            "this needs an API key: send it as `Authorization: Bearer <key>` "
            "(an admin makes keys with `lineage keys create --role ROLE`)"
        )
    record = KeyRepository(session).by_hash(hash_key(presented))
    if record is None:
        raise Unauthenticated("the API key is not valid")
    if record.revoked_at is not None:
        raise Unauthenticated(f"the API key {record.prefix}… was revoked")
    return Caller(record.id, record.name, Role(record.role))


def authorize(caller: Caller, role: Role, action: str) -> None:
    """``Forbidden`` unless ``caller``'s role includes ``role``; ``action`` says what was asked."""
    if not caller.has(role):
        raise Forbidden(f"{action} needs the {role} role; this key is a {caller.role}")


def count_use(
    session: Session,
    caller: Caller,
    action: str,
    limit: int,
    window_seconds: int,
    now: float | None = None,
) -> None:
    """Count one ``action`` (``upload``, ``job``) by ``caller``; ``RateLimited`` (with the
    seconds until the window ends) when that goes over ``limit`` per ``window_seconds`` (a fixed
    window). ``limit`` 0: no limit, nothing counted."""
    if limit <= 0:
        return
    now = time.time() if now is None else now
    window_start = int(now // window_seconds) * window_seconds
    used = KeyRepository(session).count_use(caller.id, action, window_start)
    if used > limit:
        retry_after = max(1, math.ceil(window_start + window_seconds - now))
        raise RateLimited(
            f"this key used its {limit} {action}s per {window_seconds} s; "
            f"try again in {retry_after} s",
            retry_after,
        )


def key_dict(record: ApiKey) -> dict:
    """The public JSON of a key (never the key or its hash)."""
    return {
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "prefix": record.prefix,
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
    }
