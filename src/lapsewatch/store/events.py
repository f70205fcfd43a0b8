"""Writing to the append-only event log: the account services, the cycle and the mailer.

``record_once`` relies on the unique ``events.key``: an insert that would repeat
a keyed event is skipped by the database itself (``ON CONFLICT DO NOTHING``), so
"once per account" stays true with several workers and no locks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from lapsewatch.store.db import dialect_insert
from lapsewatch.store.models import Event

__all__ = ["SYSTEM", "record", "record_once", "user_actor"]

SYSTEM = "system"
"""Actor of scheduled jobs and of requests nobody is logged in for."""


def user_actor(username: str) -> str:
    return f"user:{username}"


def record(
    session: Session,
    *,
    at: datetime,
    actor: str,
    kind: str,
    account_id: int | None = None,
    email_id: int | None = None,
    domain: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
) -> Event:
    """Add one event to the caller's transaction."""
    event = Event(
        at=at,
        actor=actor[:100],
        kind=kind,
        account_id=account_id,
        email_id=email_id,
        domain=domain,
        before=before,
        after=after,
        reason=reason,
    )
    session.add(event)
    return event


def record_once(
    session: Session,
    *,
    key: str,
    at: datetime,
    actor: str,
    kind: str,
    account_id: int | None = None,
    email_id: int | None = None,
    domain: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
) -> int | None:
    """Insert the event unless one with ``key`` exists; the new id, or ``None`` if it did."""
    values: dict[str, object] = {
        "key": key[:200],
        "at": at,
        "actor": actor[:100],
        "kind": kind,
        "account_id": account_id,
        "email_id": email_id,
        "domain": domain,
        "before": before,
        "after": after,
        "reason": reason,
    }
    statement = dialect_insert(session.get_bind().dialect.name, Event).values(**values)
    statement = statement.on_conflict_do_nothing(index_elements=["key"])
    return session.execute(statement.returning(Event.id)).scalar_one_or_none()
