"""``lapsewatch report``: the admin's overview of addresses, domains and accounts at risk."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from lapsewatch.commands._common import Format, console, fail, load_settings
from lapsewatch.commands.accounts import database_error, open_store
from lapsewatch.formats import json as json_format
from lapsewatch.formats import report as report_format
from lapsewatch.report import build_report

__all__ = ["report"]


def report(
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    at_risk_limit: Annotated[
        int, typer.Option(min=0, help="Accounts at risk to list (all are counted).")
    ] = 50,
) -> None:
    """Addresses by state, unverified by reason, domains by verdict, next checks, accounts at risk.

    At risk: no 2FA and a single verified address, on a custom domain: whoever
    buys that domain once it lapses can reset the password.
    """
    engine = open_store(load_settings())
    try:
        data = build_report(engine, at_risk_limit=at_risk_limit)
    except SQLAlchemyError as exc:
        raise fail(f"database error: {database_error(exc)}") from None
    finally:
        engine.dispose()
    if output is Format.json:
        console.print_json(json_format.dumps(report_format.report(data)))
    else:
        report_format.print_report(console, data)
