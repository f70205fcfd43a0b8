"""Sliding-window rate limits kept in the database, so every web worker shares them.

Keys are pseudonymised with an HMAC under the secret key: the table then holds
no usernames, addresses or client IPs, yet the same input always lands on the
same counter. A hit is recorded only for attempts that were let through, so an
attacker who keeps hammering does not keep a victim locked out forever: the
window drains at the limit's own pace.

Expensive checks (a password, a second factor) *reserve* their hit before the
work: the hit is committed first, then counted (:meth:`RateLimiter.over`). Of N
attempts racing, the one whose hit commits k-th counts at least k hits, so no
more than the limit are ever checked, on SQLite too. On PostgreSQL the reservations
of one key also wait for each other (:meth:`RateLimiter.serialize`, an advisory lock
held by the short reserving transaction only): without it N racers could all reserve,
all count N and all be refused, the one with the right code included. A
successful attempt gives its hit back (:meth:`RateLimiter.refund`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from lapsewatch.accounts.settings import Limit
from lapsewatch.store.models import RateLimitHit

__all__ = ["RateLimiter"]

KEEP = timedelta(days=1)
"""Hits older than this are dead for every limit we have; :meth:`prune` drops them."""


class RateLimiter:
    def __init__(self, secret_key: str) -> None:
        self._secret = secret_key.encode()

    def key(self, name: str, value: str) -> str:
        """``name`` plus a keyed hash of the case-folded value."""
        mac = hmac.new(self._secret, value.casefold().encode("utf-8", "replace"), hashlib.sha256)
        return f"{name}:{mac.hexdigest()[:40]}"

    @staticmethod
    def serialize(session: Session, keys: Sequence[str]) -> None:
        """Make this transaction's reservations of ``keys`` wait for any other's, until
        it ends (PostgreSQL; a no-op elsewhere). Then of N attempts racing, the first
        ``limit`` reserve a hit and the rest are refused at once (seen in CI without it:
        eight logins racing one recovery code all reserved, all counted eight, and
        none was let in)."""
        if session.get_bind().dialect.name != "postgresql":
            return
        for key in sorted(set(keys)):  # one order everywhere: no deadlock
            session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))

    def blocked_until(
        self, session: Session, key: str, limit: Limit, *, now: datetime
    ) -> datetime | None:
        """When the next attempt will be allowed, or ``None`` if it is allowed now."""
        since = now - limit.window
        count, oldest = session.execute(
            select(func.count(), func.min(RateLimitHit.at)).where(
                RateLimitHit.key == key, RateLimitHit.at > since
            )
        ).one()
        if count < limit.count:
            return None
        return (oldest or now) + limit.window

    def hit(self, session: Session, key: str, limit: Limit, *, now: datetime) -> int:
        """Record one attempt and forget this key's attempts that left the window; its id."""
        session.execute(
            delete(RateLimitHit).where(
                RateLimitHit.key == key, RateLimitHit.at <= now - limit.window
            )
        )
        row = RateLimitHit(key=key, at=now)
        session.add(row)
        session.flush()
        return row.id

    def over(self, session: Session, key: str, limit: Limit, *, now: datetime) -> bool:
        """After a reserved (committed) hit: whether this key now holds more than the limit."""
        count = session.scalar(
            select(func.count()).where(
                RateLimitHit.key == key, RateLimitHit.at > now - limit.window
            )
        )
        return int(count or 0) > limit.count

    @staticmethod
    def refund(session: Session, hit_ids: list[int]) -> None:
        """Give back reserved hits: the attempt succeeded, or was refused without a check."""
        if hit_ids:
            session.execute(delete(RateLimitHit).where(RateLimitHit.id.in_(hit_ids)))

    def allow(self, session: Session, key: str, limit: Limit, *, now: datetime) -> bool:
        """Record the attempt and say yes, or record nothing and say no."""
        if self.blocked_until(session, key, limit, now=now) is not None:
            return False
        self.hit(session, key, limit, now=now)
        return True

    @staticmethod
    def prune(session: Session, *, now: datetime, keep: timedelta = KEEP) -> int:
        """Delete hits older than ``keep`` (keys nobody hit again); how many."""
        result = session.execute(delete(RateLimitHit).where(RateLimitHit.at < now - keep))
        return int(result.rowcount)  # type: ignore[attr-defined]
