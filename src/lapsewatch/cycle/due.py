"""Which domains are due: behind at least one verified, non-free address, and
never checked or past their next due time. Oldest first, in a bounded batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from lapsewatch.store.models import Domain, Email

__all__ = ["DueDomain", "select_due"]


@dataclass(frozen=True)
class DueDomain:
    name: str
    earliest_verified_at: datetime | None
    """The oldest verification among its verified addresses: the most exposed one
    decides whether a registration date counts as a re-registration."""


def select_due(
    session: Session,
    *,
    now: datetime,
    limit: int | None,
    everything: bool = False,
    names: list[str] | None = None,
    include_leased: bool = False,
) -> list[DueDomain]:
    """Due domains (``everything``: all behind a verified address), never leased ones."""
    verified = (
        select(Email.domain, func.min(Email.verified_at).label("earliest"))
        .where(Email.verified.is_(True), Email.free_provider.is_(False))
        .group_by(Email.domain)
        .subquery()
    )
    # From the addresses, not the domains table: an address whose domain row is
    # missing (added by another path) is due at once rather than forgotten.
    query = (
        select(verified.c.domain, verified.c.earliest)
        .outerjoin(Domain, Domain.name == verified.c.domain)
        .order_by(Domain.next_due_at.is_not(None), Domain.next_due_at, verified.c.domain)
    )
    if not include_leased:
        query = query.where(or_(Domain.lease_until.is_(None), Domain.lease_until < now))
    if not everything:
        query = query.where(or_(Domain.next_due_at.is_(None), Domain.next_due_at <= now))
    if names is not None:
        query = query.where(verified.c.domain.in_(names))
    if limit is not None:
        query = query.limit(limit)
    return [DueDomain(name, earliest) for name, earliest in session.execute(query)]
