"""``lapsewatch domain``: the verdict on one address or domain, now."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

import typer

from lapsewatch import domains, lookup
from lapsewatch.commands._common import Format, console, exit_code, fail, load_settings
from lapsewatch.dates import parse_datetime
from lapsewatch.formats import json as json_format
from lapsewatch.formats import table as table_format

__all__ = ["domain"]


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
    """Check the domain behind NAME now, with every configured source.

    Exit codes: 0 trusted, 1 dangerous verdict, 2 bad input or configuration,
    3 unknown (no source could say).
    """
    settings = load_settings()
    when: datetime | None = None
    if verified_at is not None:
        try:
            when = parse_datetime(verified_at)
        except ValueError as exc:
            raise fail(f"--verified-at: {exc}") from None
    try:
        free = domains.load_free_providers(settings.free_providers_file)
    except (OSError, domains.DomainError) as exc:
        raise fail(f"LAPSEWATCH_FREE_PROVIDERS: {exc}") from None
    try:
        report = asyncio.run(lookup.check(name, settings, verified_at=when, free_providers=free))
    except domains.DomainError as exc:
        raise fail(str(exc)) from None
    if output is Format.json:
        console.print_json(json_format.dumps(json_format.domain_report(report)))
    else:
        table_format.print_domain_report(console, report)
        if report.decision.doubt:
            console.print(
                f"  thin evidence ({report.decision.doubt}): the check cycle unverifies only "
                f"if a check {settings.confirm_minutes:g} minutes later says the same",
                highlight=False,
            )
    raise typer.Exit(exit_code(report.decision.verdict))
