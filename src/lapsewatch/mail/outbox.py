"""Send queued mail; a notice leaves the queue only once the SMTP server accepted it.

Every mail goes through here: the cycle's and the mail jobs' notices, and the
account side's links and security mails. Recipients are resolved at send time
(:func:`lapsewatch.notices.recipients`), never at queue time: an address
unverified in between (the lapsed one, now read by whoever bought the domain)
never receives anything, and a notice for one address no longer in the state it
was for is dropped. A link's token is made as it is claimed
(:mod:`lapsewatch.mail.links`). Each notice goes out as one message to all of its
recipients, then ``sent_at`` is committed; a crash in between repeats that one
notice (at least once, never lost; a repeated link carries a new token).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from lapsewatch.accounts import tokens
from lapsewatch.mail.links import Links, link_mail
from lapsewatch.notices import LINK_KINDS, dropped, recipients
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
    dropped: int = 0
    """Notices for one address no longer in the state they were for (never sent)."""


def send_pending(
    engine: Engine,
    mailer: Mailer,
    *,
    now: datetime | None = None,
    limit: int = DEFAULT_BATCH,
    clock: Callable[[], datetime] | None = None,
    links: Links | None = None,
    ids: Sequence[int] | None = None,
) -> OutboxSummary:
    """Try every unsent notice (oldest first, at most ``limit``; of ``ids`` only, if
    given) once. Without ``links``, link notices stay queued for a run that has them."""
    sessions = make_sessionmaker(engine)

    def stamp() -> datetime:
        return now or (clock() if clock else datetime.now(UTC))

    query = select(Notice.id).where(Notice.sent_at.is_(None)).order_by(Notice.id).limit(limit)
    if ids is not None:
        query = query.where(Notice.id.in_(list(ids)))
    if links is None:
        query = query.where(Notice.kind.not_in(sorted(LINK_KINDS)))
    with sessions() as session:
        pending = list(session.scalars(query))
    sent = failed = waiting = gone = 0
    errors: list[str] = []
    for notice_id in pending:
        # The lease runs on the real clock, whatever ``now`` the caller stamps with: a
        # run's ``now`` is when it started, and a notice claimed late in a long run
        # would get a lease already expired (another run would send it again). A link
        # is made on the clock too, never the run's start (its life would be shorter).
        made_at = clock() if clock else datetime.now(UTC)
        claimed = _claim(sessions, notice_id, datetime.now(UTC), links, made_at)
        if claimed is None:
            continue  # sent meanwhile, or another run is sending it
        if claimed is _DROPPED:
            gone += 1
            continue
        if not claimed.mail.to:
            waiting += 1
            continue
        try:
            mailer.send(claimed.mail)
        except MailError as exc:
            _release(sessions, notice_id, claimed, exc.permanent, made_at)
            errors.append(f"notice {notice_id}: {exc}")
            log.warning("notice %s not sent: %s", notice_id, exc)
            if not exc.permanent:
                return OutboxSummary(sent, failed + 1, waiting, True, tuple(errors), gone)
            failed += 1
            continue
        with sessions.begin() as session:
            session.execute(
                update(Notice)
                .where(Notice.id == notice_id)
                .values(sent_at=stamp(), lease_until=None)
            )
        sent += 1
    return OutboxSummary(sent, failed, waiting, False, tuple(errors), gone)


@dataclass(frozen=True)
class _Claimed:
    mail: Mail
    token: str | None = None
    """The token a link was made with (to retire if the mail does not go out)."""


_DROPPED = _Claimed(Mail((), "", "", "dropped"))
"""What :func:`_claim` gives for a notice it deleted (see :func:`lapsewatch.notices.dropped`)."""


def _claim(
    sessions: sessionmaker[Session],
    notice_id: int,
    now: datetime,
    links: Links | None,
    made_at: datetime,
) -> _Claimed | None:
    """The notice as it goes out, leased to this run until ``now`` + :data:`LEASE`
    (``now``: the real time); ``None`` when it is sent or held by another run. A mail
    with no recipient (nobody verified yet) is not leased; one for an address no
    longer in the state it was for, or a link older than its life, is deleted
    (:data:`_DROPPED`). A link's token is made and committed here, before the mail
    goes out, stamped ``made_at``, while its address's row is locked: the cycle cannot
    unverify it between the check and the token (its revocation would miss the token)."""
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
        to = recipients(session, notice, lock=True)
        expired = links is not None and notice.kind in LINK_KINDS and links.expired(notice, made_at)
        if dropped(notice, to) or expired:
            session.execute(delete(Notice).where(Notice.id == notice_id))
            why = "expired" if expired else "its address is no longer in the state it was for"
            log.info("%s notice %s dropped: %s", notice.kind, notice_id, why)
            return _DROPPED
        if not to:
            notice.lease_until = None
            return _Claimed(Mail((), notice.subject, notice.body, notice.kind))
        if notice.kind in LINK_KINDS and links is not None:
            mail, token = link_mail(session, notice, links, now=made_at)
            return _Claimed(mail, token)
        return _Claimed(Mail(tuple(to), notice.subject, notice.body, notice.kind))


def _release(
    sessions: sessionmaker[Session],
    notice_id: int,
    claimed: _Claimed,
    permanent: bool,
    now: datetime,
) -> None:
    """A send failed: the link it carried is retired (it never left), and the notice is
    given back at once for the next run; a link the server refused for good is dropped
    (its owner asks again) rather than tried, and a token made, at every run."""
    with sessions.begin() as session:
        if claimed.token is not None:
            tokens.retire(session, claimed.token, now=now)
            if permanent:
                session.execute(delete(Notice).where(Notice.id == notice_id))
                return
        session.execute(update(Notice).where(Notice.id == notice_id).values(lease_until=None))
