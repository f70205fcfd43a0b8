"""Mail jobs: expiry warnings, security advice and the notice outbox.

Notices are queued as rows and sent by :func:`~lapsewatch.mail.jobs.run_mail_jobs`,
which retries until the server accepts them. Links (verification, password reset)
are not queued here: the account services send them at once (:mod:`lapsewatch.smtp`)
and never store them, since only their hashes may live in the database. The words
of every mail are in :mod:`lapsewatch.messages`.
"""

from lapsewatch.mail.jobs import MailJobSummary, run_mail_jobs
from lapsewatch.mail.outbox import OutboxSummary, send_pending

__all__ = [
    "MailJobSummary",
    "OutboxSummary",
    "run_mail_jobs",
    "send_pending",
]
