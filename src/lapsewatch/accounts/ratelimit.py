"""Sliding-window rate limits kept in the database, so every web worker shares them.

The limiter keeps its own books: each call runs its own short transaction, on
connections of its own (``store.db.side_engine``), and commits it, whatever becomes
of the caller's (as Warehouse's limiter keeps its
counts in Redis, outside the request's transaction). An attempt is counted the
moment it is let through, so attempts racing in other requests see it, even when
the caller rolls back. One exception: on SQLite, once the caller's transaction has
written it holds the database's write lock, which the limiter's own transaction
would wait for; then the limiter books in the caller's transaction (no other
request can write, so none races it until that commits). The account services
count before they write, so that happens only to a caller that composes several
calls in one transaction.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from lapsewatch.accounts.settings import Limit
from lapsewatch.store.models import RateLimitHit
from lapsewatch.store.work import writing_on_sqlite

__all__ = ["Over", "RateLimiter"]

KEEP = timedelta(days=1)
"""Hits older than this are dead for every limit we have; :meth:`prune` drops them."""


@dataclass(frozen=True)
class Over:
    """A refusal: which key was over its limit, and when the next attempt may come."""

    key: str
    until: datetime
    blocked: bool
    """Over before this attempt (else: racing attempts took it over, the hit given back)."""


class RateLimiter:
    def __init__(self, secret_key: str, sessions: sessionmaker[Session]) -> None:
        self._secret = secret_key.encode()
        self._sessions = sessions

    @contextmanager
    def _books(self, caller: Session) -> Iterator[Session]:
        """A transaction of its own, committed at the end; the caller's if that holds
        SQLite's write lock (see the module's docstring)."""
        if writing_on_sqlite(caller):
            yield caller
            caller.flush()
            return
        with self._sessions.begin() as session:
            yield session

    def reserve(
        self, caller: Session, keys: Sequence[tuple[str, Limit]], *, now: datetime
    ) -> tuple[list[int], Over | None]:
        """Before an expensive check: refuse if any key is over its limit, else record
        and commit one hit per key, then count again (:meth:`over`) and refuse (giving
        the hits back) if racing attempts took a key over. The hits' ids, for
        :meth:`refund` once the check succeeded."""
        with self._books(caller) as session:
            self.serialize(session, [key for key, _ in keys])
            for key, limit in keys:
                until = self.blocked_until(session, key, limit, now=now)
                if until is not None:
                    return [], Over(key, until, blocked=True)
            hits = [self.hit(session, key, limit, now=now) for key, limit in keys]
        with self._books(caller) as session:
            over = [(key, limit) for key, limit in keys if self.over(session, key, limit, now=now)]
            if not over:
                return hits, None
            self._refund(session, hits)
        key, window = max(((k, limit.window) for k, limit in over), key=lambda kw: kw[1])
        return [], Over(key, now + window, blocked=False)

    def refund(self, hit_ids: list[int]) -> None:
        """Give back reserved hits: the attempt succeeded."""
        if hit_ids:
            with self._sessions.begin() as session:
                self._refund(session, hit_ids)

    def allow(self, caller: Session, key: str, limit: Limit, *, now: datetime) -> bool:
        """Record the attempt and say yes, or record nothing and say no."""
        with self._books(caller) as session:
            if self.blocked_until(session, key, limit, now=now) is not None:
                return False
            self.hit(session, key, limit, now=now)
            return True

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
    def _refund(session: Session, hit_ids: list[int]) -> None:
        session.execute(delete(RateLimitHit).where(RateLimitHit.id.in_(hit_ids)))

    @staticmethod
    def prune(session: Session, *, now: datetime, keep: timedelta = KEEP) -> int:
        """Delete hits older than ``keep`` (keys nobody hit again); how many."""
        result = session.execute(delete(RateLimitHit).where(RateLimitHit.at < now - keep))
        return int(result.rowcount)  # type: ignore[attr-defined]
