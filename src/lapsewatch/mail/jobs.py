"""The periodic mail job: queue what is due, then send every queued notice.

Queueing commits before sending, so a mail server that is down loses nothing:
the notices wait in the database for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from lapsewatch import metrics
from lapsewatch.accounts.ratelimit import RateLimiter
from lapsewatch.mail.advice import queue_security_advice
from lapsewatch.mail.expiry import DEFAULT_WARNING, queue_expiry_warnings
from lapsewatch.mail.links import Links
from lapsewatch.mail.outbox import OutboxSummary, send_pending
from lapsewatch.smtp import Mailer
from lapsewatch.store.db import make_sessionmaker

__all__ = ["MailJobSummary", "run_mail_jobs", "send_outbox"]


@dataclass(frozen=True)
class MailJobSummary:
    expiry_warnings: int
    advice: int
    outbox: OutboxSummary

    def counts(self) -> dict[str, int]:
        """The figures ``notify`` prints and its Celery task returns, by one name each."""
        return {
            "expiry_warnings_queued": self.expiry_warnings,
            "advice_queued": self.advice,
            "sent": self.outbox.sent,
            "failed": self.outbox.failed,
            "waiting": self.outbox.waiting,
            "stopped": self.outbox.stopped,
            "dropped": self.outbox.dropped,
        }


def run_mail_jobs(
    engine: Engine,
    mailer: Mailer,
    links: Links,
    *,
    now: datetime | None = None,
    warn_before: timedelta = DEFAULT_WARNING,
) -> MailJobSummary:
    """Queue expiry warnings and advice, prune old rate-limit hits, send the outbox
    (the account side's links and security mails included)."""
    now = now or datetime.now(UTC)
    with make_sessionmaker(engine).begin() as session:
        warnings = queue_expiry_warnings(session, now=now, before=warn_before)
        advice = queue_security_advice(session, now=now)
        RateLimiter.prune(session, now=now)
    return MailJobSummary(warnings, advice, send_outbox(engine, mailer, links, now=now))


def send_outbox(
    engine: Engine, mailer: Mailer, links: Links, *, now: datetime | None = None
) -> OutboxSummary:
    """Send every queued mail, links included, and count what went (the mail jobs'
    part that the ``send_mail`` task runs alone)."""
    outbox = send_pending(engine, mailer, now=now, links=links)
    metrics.count_notices(outbox.sent, outbox.failed, outbox.stopped)
    return outbox
