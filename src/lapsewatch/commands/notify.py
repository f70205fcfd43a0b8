"""``lapsewatch notify``: the periodic job that tells people — queue expiry warnings
and security advice, then send every queued notice over SMTP (the account side's
links and security mails a web process could not send included)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from lapsewatch.accounts.errors import AccountError
from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.commands._common import Format, console, fail, load_settings
from lapsewatch.commands.accounts import open_store
from lapsewatch.formats import json as json_format
from lapsewatch.mail.jobs import run_mail_jobs
from lapsewatch.mail.links import Links
from lapsewatch.smtp import SmtpMailer

__all__ = ["notify"]


def notify(
    warn_weeks: Annotated[
        float, typer.Option(min=0, help="Warn owners this many weeks before a known expiry.")
    ] = 4.0,
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Queue expiry warnings and advice, then send queued notices (LAPSEWATCH_SMTP_URL)."""
    engine = open_store(load_settings())
    try:
        account_settings = AccountSettings.from_env()
        mailer = SmtpMailer.from_settings(account_settings)
    except (AccountError, ValueError) as exc:
        raise fail(str(exc)) from None
    links = Links.from_settings(account_settings)
    try:
        summary = run_mail_jobs(engine, mailer, links, warn_before=timedelta(weeks=warn_weeks))
    except SQLAlchemyError as exc:
        raise fail(f"database error; queued notices are kept for the next run: {exc}") from None
    outbox = summary.outbox
    data: dict[str, object] = {**summary.counts(), "errors": list(outbox.errors)}
    if output is Format.json:
        console.print_json(json_format.dumps(data))
    else:
        stopped = " (the mail server was unreachable: the rest stays queued)"
        console.print(
            f"queued {summary.expiry_warnings} expiry warnings and {summary.advice} advice "
            f"notices; sent {outbox.sent}, failed {outbox.failed}, waiting {outbox.waiting}"
            + (stopped if outbox.stopped else ""),
            highlight=False,
        )
        for error in outbox.errors:
            console.print(f"  {error}", highlight=False)
    if outbox.stopped:
        raise typer.Exit(1)
