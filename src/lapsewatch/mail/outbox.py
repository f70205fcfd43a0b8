"""Send queued notices; a notice leaves the queue only once the SMTP server accepted it.

Recipients are resolved at send time (:func:`lapsewatch.notices.recipients`),
never at queue time: an address unverified in between (the lapsed one, now
read by whoever bought the domain) never receives anything. Each notice goes
out as one message to all of its recipients, then ``sent_at`` is committed; a
crash in between repeats that one notice (at least once, never lost).

When the server cannot be reached the run stops at once and leaves everything
queued for the next run, instead of timing out once per notice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from lapsewatch.mail.smtp import Mail, Mailer, MailError
from lapsewatch.notices import recipients
from lapsewatch.store.db import make_sessionmaker
from lapsewatch.store.models import Notice

__all__ = ["OutboxSummary", "send_pending"]

log = logging.getLogger(__name__)

DEFAULT_BATCH = 500


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
        with sessions.begin() as session:
            # SKIP LOCKED: two outbox runs on PostgreSQL never send one notice twice.
            notice = session.scalars(
                select(Notice)
                .where(Notice.id == notice_id, Notice.sent_at.is_(None))
                .with_for_update(skip_locked=True)
            ).one_or_none()
            if notice is None:
                continue  # sent meanwhile by another run
            to = recipients(session, notice)
            if not to:
                waiting += 1
                continue
            try:
                mailer.send(Mail(tuple(to), notice.subject, notice.body, notice.kind))
            except MailError as exc:
                errors.append(f"notice {notice.id}: {exc}")
                log.warning("notice %s not sent: %s", notice.id, exc)
                if not exc.permanent:
                    return OutboxSummary(sent, failed + 1, waiting, True, tuple(errors))
                failed += 1
                continue
            notice.sent_at = stamp()
        sent += 1
    return OutboxSummary(sent, failed, waiting, False, tuple(errors))
