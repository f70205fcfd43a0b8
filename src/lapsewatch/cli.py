"""The ``lapsewatch`` command.

Exit codes: 0 trusted, 1 dangerous verdict, 2 bad input or configuration,
3 ``unknown`` (no source could say).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import httpx
import stamina.instrumentation
import typer

from lapsewatch import domains, lookup
from lapsewatch.commands import check as check_command
from lapsewatch.commands import demo as demo_command
from lapsewatch.commands import notify as notify_command
from lapsewatch.commands import report as report_command
from lapsewatch.commands import scan as scan_command
from lapsewatch.commands import worker as worker_command
from lapsewatch.commands._common import (
    Format,
    console,
    exit_code,
    fail,
    load_settings,
)
from lapsewatch.commands.accounts import accounts_app
from lapsewatch.config import Settings
from lapsewatch.dates import parse_datetime
from lapsewatch.formats import json as json_format
from lapsewatch.formats import table as table_format

if TYPE_CHECKING:
    pass

__all__ = ["app", "exit_code", "main"]

app = typer.Typer(
    help="Stop account takeovers through lapsed email domains.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(check_command.check)
app.command()(worker_command.worker)
app.command()(scan_command.scan)
app.add_typer(accounts_app, name="accounts")
app.command()(report_command.report)
app.command()(demo_command.demo)
app.command()(notify_command.notify)
bootstrap_app = typer.Typer(help="The RDAP bootstrap file (which server answers for a TLD).")
app.add_typer(bootstrap_app, name="rdap-bootstrap")


def _free_providers(settings: Settings) -> domains.FreeProviders:
    try:
        return domains.load_free_providers(settings.free_providers_file)
    except OSError as exc:
        raise fail(f"LAPSEWATCH_FREE_PROVIDERS: {exc}") from None


@app.command()
def init() -> None:
    """Create the database schema, or upgrade it to the newest version."""
    from sqlalchemy.exc import SQLAlchemyError

    from lapsewatch.store import make_engine, upgrade
    from lapsewatch.store.schema import current_revision

    settings = load_settings()
    try:
        engine = make_engine(settings.database_url)
        upgrade(engine)
        revision = current_revision(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise fail(f"could not prepare {settings.database_url}: {exc}") from None
    console.print(
        f"database {engine.url.render_as_string()} is at schema {revision}", highlight=False
    )


@app.command()
def domain(
    name: Annotated[str, typer.Argument(help="An email address or a domain.")],
    verified_at: Annotated[
        str | None,
        typer.Option(
            help="When the address was verified (ISO 8601); enables re-registration check."
        ),
    ] = None,
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Check the domain behind NAME now, with every configured source."""
    settings = load_settings()
    when: datetime | None = None
    if verified_at is not None:
        try:
            when = parse_datetime(verified_at)
        except ValueError as exc:
            raise fail(f"--verified-at: {exc}") from None
    free = _free_providers(settings)
    try:
        report = asyncio.run(lookup.check(name, settings, verified_at=when, free_providers=free))
    except domains.DomainError as exc:
        raise fail(str(exc)) from None
    if output is Format.json:
        console.print_json(json_format.dumps(json_format.domain_report(report)))
    else:
        table_format.print_domain_report(console, report)
    raise typer.Exit(exit_code(report.decision.verdict))


@bootstrap_app.command("update")
def bootstrap_update(
    url: Annotated[str, typer.Option(help="Where to fetch dns.json from.")] = (
        "https://data.iana.org/rdap/dns.json"
    ),
) -> None:
    """Fetch a fresh IANA bootstrap file into the user cache (needs the internet)."""
    from lapsewatch.sources.bootstrap import (
        BootstrapError,
        cached_bootstrap_path,
        parse_bootstrap,
    )

    try:
        response = httpx.get(url, timeout=30.0, follow_redirects=True)
        response.raise_for_status()
        bootstrap = parse_bootstrap(response.json(), url)
    except (httpx.HTTPError, ValueError, BootstrapError) as exc:
        raise fail(f"could not refresh the bootstrap from {url}: {exc}") from None
    path = cached_bootstrap_path()
    temporary = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(response.content)
        temporary.replace(path)  # atomic: a full disk leaves the old copy intact
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise fail(f"could not save {path}: {exc}") from None
    console.print(
        f"saved {len(bootstrap.services)} TLD entries (published {bootstrap.publication}) to {path}"
    )


def main() -> None:
    # Retries are normal and bounded; their log lines would only clutter the output.
    stamina.instrumentation.set_on_retry_hooks([])
    app()
