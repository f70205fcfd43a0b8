"""Send queued notices; a notice leaves the queue only once the SMTP server accepted it.

Recipients are resolved at send time (:func:`lapsewatch.notices.recipients`),
never at queue time: an address unverified in between (the lapsed one, now
read by whoever bought the domain) never receives anything. Each notice goes
out as one message to all of its recipients, then ``sent_at`` is committed; a
crash in between repeats that one notice (at least once, never lost).

No database lock waits on the mail server: a run claims a notice with a lease
(``lease_until``, a conditional update in a short transaction, so two runs never
send it twice), sends it with no transaction open, then records ``sent_at``; a
failed send gives the notice back at once, a run that dies mid-send leaves the
lease to expire (:data:`LEASE`).

When the server cannot be reached the run stops at once and leaves everything
queued for the next run, instead of timing out once per notice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from lapsewatch.notices import recipients
from lapsewatch.smtp import Mail, Mailer, MailError
from lapsewatch.store.db import make_sessionmaker
from lapsewatch.store.models import Notice

__all__ = ["OutboxSummary", "send_pending"]

log = logging.getLogger(__name__)

DEFAULT_BATCH = 500
LEASE = timedelta(minutes=10)
"""How long a run holds a notice it is sending (far longer than one SMTP exchange)."""


@dataclass(frozen=True)
class OutboxSummary:
    sent: int = 0
    failed: int = 0
    """Notices the server refused (left queued)."""
    waiting: int = 0
    """Notices with nobody to send to yet: the account has no verified address."""
    stopped: bool = False
    """The server was unreachable: the run stopped early, the rest stays queued."""
    errors: tuple[str, ...] = ()


def send_pending(
    engine: Engine,
    mailer: Mailer,
    *,
    now: datetime | None = None,
    limit: int = DEFAULT_BATCH,
    clock: Callable[[], datetime] | None = None,
) -> OutboxSummary:
    """Try every unsent notice (oldest first, at most ``limit``) once."""
    sessions = make_sessionmaker(engine)

    def stamp() -> datetime:
        return now or (clock() if clock else datetime.now(UTC))

    with sessions() as session:
        pending = list(
            session.scalars(
                select(Notice.id).where(Notice.sent_at.is_(None)).order_by(Notice.id).limit(limit)
            )
        )
    sent = failed = waiting = 0
    errors: list[str] = []
    for notice_id in pending:
        # The lease runs on the real clock, whatever ``now`` the caller stamps with: a
        # run's ``now`` is when it started, and a notice claimed late in a long run
        # would get a lease already expired (another run would send it again).
        claimed = _claim(sessions, notice_id, datetime.now(UTC))
        if claimed is None:
            continue  # sent meanwhile, or another run is sending it
        if not claimed.to:
            waiting += 1
            continue
        try:
            mailer.send(claimed)
        except MailError as exc:
            _release(sessions, notice_id)
            errors.append(f"notice {notice_id}: {exc}")
            log.warning("notice %s not sent: %s", notice_id, exc)
            if not exc.permanent:
                return OutboxSummary(sent, failed + 1, waiting, True, tuple(errors))
            failed += 1
            continue
        with sessions.begin() as session:
            session.execute(
                update(Notice)
                .where(Notice.id == notice_id)
                .values(sent_at=stamp(), lease_until=None)
            )
        sent += 1
    return OutboxSummary(sent, failed, waiting, False, tuple(errors))


def _claim(sessions: sessionmaker[Session], notice_id: int, now: datetime) -> Mail | None:
    """The notice as it goes out, leased to this run until ``now`` + :data:`LEASE`
    (``now``: the real time); ``None`` when it is sent or held by another run. A mail
    with no recipient (nobody verified yet) is not leased."""
    with sessions.begin() as session:
        taken = cast(
            CursorResult[Any],
            session.execute(
                update(Notice)
                .where(
                    Notice.id == notice_id,
                    Notice.sent_at.is_(None),
                    or_(Notice.lease_until.is_(None), Notice.lease_until < now),
                )
                .values(lease_until=now + LEASE)
                .execution_options(synchronize_session=False)
            ),
        )
        if taken.rowcount != 1:  # no RETURNING: SQLite before 3.35 has none
            return None
        notice = session.get_one(Notice, notice_id)
        to = tuple(recipients(session, notice))
        if not to:
            notice.lease_until = None
        return Mail(to, notice.subject, notice.body, notice.kind)


def _release(sessions: sessionmaker[Session], notice_id: int) -> None:
    """Give a notice back at once (its send failed): the next run tries it again."""
    with sessions.begin() as session:
        session.execute(update(Notice).where(Notice.id == notice_id).values(lease_until=None))
