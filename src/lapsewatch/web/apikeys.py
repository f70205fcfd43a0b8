"""API keys for registries: made once, shown once, stored only as SHA-256.

A key is 256 random bits, so a plain (unsalted) SHA-256 is enough: there is
nothing to guess, and a leaked table of hashes opens nothing. Lookup by hash
is one indexed query, fast enough to run on every API request.

Each function works in the caller's session; the caller (a command, a request)
owns the transaction and commits it.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lapsewatch.store.models import ApiKey

__all__ = [
    "ApiKeyInfo",
    "KeyNameTaken",
    "authenticate",
    "create_api_key",
    "hash_key",
    "list_api_keys",
    "revoke_api_key",
]

PREFIX = "lw_"
"""Makes a leaked key recognisable to secret scanners."""


class KeyNameTaken(ValueError):
    pass


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


MAX_NAME = 96
"""A key's pushes own accounts as ``api:<name>``, which must fit ``accounts.owner`` (100)."""


class KeyNameInvalid(ValueError):
    """Not a usable key name; ``str()`` says why."""


def check_key_name(name: str) -> str:
    """The name, trimmed: 1 to :data:`MAX_NAME` characters, no control characters."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise KeyNameInvalid(f"a key name has 1 to {MAX_NAME} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        raise KeyNameInvalid("a key name has no control or format characters")
    return name


def create_api_key(session: Session, name: str, *, now: datetime) -> str:
    """A new key named ``name``; the only time the key itself is ever seen.

    A taken name raises :class:`KeyNameTaken`, after which the caller's transaction can
    only be rolled back (its ``with`` block does so as the error passes)."""
    name = check_key_name(name)
    key = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, key_hash=hash_key(key), created_at=now))
    try:
        session.flush()
    except IntegrityError:
        raise KeyNameTaken(f"an API key named {name!r} exists already") from None
    return key


def authenticate(session: Session, key: str) -> ApiKeyInfo | None:
    """The key's record if it exists and is not revoked."""
    if not key or len(key) > 200:
        return None
    row = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return None if row is None else ApiKeyInfo(row.id, row.name, row.created_at, None)


def revoke_api_key(session: Session, name: str, *, now: datetime) -> bool:
    """Revoke the key named ``name``; ``False`` if there is no such live key."""
    row = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now
    return True


def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    return [
        ApiKeyInfo(row.id, row.name, row.created_at, row.revoked_at)
        for row in session.scalars(select(ApiKey).order_by(ApiKey.name))
    ]
