"""The ``lapsewatch`` command: assembles the sub-commands in ``lapsewatch.commands``."""

from __future__ import annotations

import stamina.instrumentation
import typer

from lapsewatch.commands import (
    beat,
    check,
    demo,
    domain,
    init,
    notify,
    report,
    scan,
    serve,
    worker,
)
from lapsewatch.commands._common import exit_code
from lapsewatch.commands.accounts import accounts_app
from lapsewatch.commands.admin import admin_app
from lapsewatch.commands.bootstrap import bootstrap_app
from lapsewatch.commands.whois_servers import whois_servers_app

__all__ = ["app", "exit_code", "main"]

app = typer.Typer(
    help="Stop account takeovers through lapsed email domains.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# The stable interface (DESIGN.md) first, then the operator's tools.
app.command()(init.init)
app.command()(domain.domain)
app.command()(check.check)
app.command()(report.report)
app.add_typer(accounts_app, name="accounts")
app.command()(serve.serve)
app.command()(scan.scan)
app.command()(demo.demo)
app.command()(notify.notify)
app.command()(worker.worker)
app.command()(beat.beat)
app.add_typer(admin_app, name="admin")
app.add_typer(bootstrap_app, name="rdap-bootstrap")
app.add_typer(whois_servers_app, name="whois-servers")


def main() -> None:
    # Retries are normal and bounded; their log lines would only clutter the output.
    stamina.instrumentation.set_on_retry_hooks([])
    app()
