"""Mail jobs: expiry warnings, security advice and the notice outbox.

Every mail is a queued row, sent by the outbox (:mod:`~lapsewatch.mail.outbox`: the
mail job :func:`~lapsewatch.mail.jobs.run_mail_jobs`, the ``send_mail`` task, the web
process's :mod:`~lapsewatch.mail.sender`), which retries until the server accepts it.
A link (verification, password reset) is queued as an intent and its token made as it
is sent (:mod:`~lapsewatch.mail.links`): only token hashes live in the database. The
words of every mail are in :mod:`lapsewatch.messages`.
"""

from lapsewatch.mail.jobs import MailJobSummary, run_mail_jobs
from lapsewatch.mail.outbox import OutboxSummary, send_pending

__all__ = [
    "MailJobSummary",
    "OutboxSummary",
    "run_mail_jobs",
    "send_pending",
]
