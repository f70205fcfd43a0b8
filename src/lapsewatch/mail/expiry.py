"""Queue "your domain Y expires on D" some weeks before a known expiration date.

Warned once per account, domain and expiration date: the event key makes a
second run (or a second worker) a no-op, and a renewal moves the date, so the
next year's expiry is warned about again. Domains already judged dangerous are
skipped: their addresses are unverified and the owner was told why.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lapsewatch.dates import isoformat
from lapsewatch.messages import expiry_notice
from lapsewatch.store.events import SYSTEM, record_once
from lapsewatch.store.models import Domain, Email, Notice
from lapsewatch.verdict import DANGEROUS

__all__ = ["DEFAULT_WARNING", "KIND", "queue_expiry_warnings"]

KIND = "domain.expiry_warning"
DEFAULT_WARNING = timedelta(weeks=4)


def queue_expiry_warnings(
    session: Session, *, now: datetime, before: timedelta = DEFAULT_WARNING
) -> int:
    """Queue the warnings due at ``now`` in the caller's transaction; how many were new."""
    rows = session.execute(
        select(Email.account_id, Email.address, Domain.name, Domain.expires_at)
        .join(Domain, Domain.name == Email.domain)
        .where(
            Email.verified.is_(True),
            Domain.expires_at.is_not(None),
            Domain.expires_at > now,
            Domain.expires_at <= now + before,
            or_(
                Domain.last_verdict.is_(None),
                Domain.last_verdict.not_in([v.value for v in DANGEROUS]),
            ),
        )
        .order_by(Email.account_id, Domain.name, Email.id)
    ).all()
    grouped: dict[tuple[int, str, datetime], list[str]] = defaultdict(list)
    for account_id, address, domain, expires_at in rows:
        assert expires_at is not None  # filtered in the query
        grouped[(account_id, domain, expires_at)].append(address)
    queued = 0
    for (account_id, domain, expires_at), addresses in grouped.items():
        day = expires_at.date().isoformat()
        event_id = record_once(
            session,
            key=f"{KIND}:{account_id}:{domain}:{day}",
            at=now,
            actor=SYSTEM,
            kind=KIND,
            account_id=account_id,
            domain=domain,
            after={"expires_at": isoformat(expires_at), "addresses": addresses},
            reason=f"{domain} expires on {day}",
        )
        if event_id is None:
            continue
        subject, body = expiry_notice(
            domain=domain, expires_at=expires_at, addresses=tuple(addresses), now=now
        )
        session.add(
            Notice(
                account_id=account_id,
                to_address=None,
                kind=KIND,
                subject=subject,
                body=body,
                created_at=now,
                event_id=event_id,
            )
        )
        queued += 1
    return queued
