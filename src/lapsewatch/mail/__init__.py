"""Mail: SMTP sending, the words of every message, and the notice outbox.

Links (verification, password reset) are sent at once and never stored, since
only their hashes may live in the database; notices are queued as rows and
sent by :func:`~lapsewatch.mail.jobs.run_mail_jobs`, which retries until the
server accepts them.
"""

from lapsewatch.mail.jobs import MailJobSummary, run_mail_jobs
from lapsewatch.mail.outbox import OutboxSummary, send_pending
from lapsewatch.mail.smtp import BackgroundMailer, Mail, Mailer, MailError, SmtpConfig, SmtpMailer

__all__ = [
    "BackgroundMailer",
    "Mail",
    "MailError",
    "MailJobSummary",
    "Mailer",
    "OutboxSummary",
    "SmtpConfig",
    "SmtpMailer",
    "run_mail_jobs",
    "send_pending",
]
