"""Output for ``lapsewatch accounts``: JSON dicts (the contract) and Rich tables (for people)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lapsewatch.accounts.importer import ImportSummary
from lapsewatch.accounts.queries import AccountView, EmailView
from lapsewatch.dates import isoformat
from lapsewatch.domains import to_unicode

__all__ = ["account", "import_summary", "print_account", "print_import_summary"]

_SHOWN_PROBLEMS = 50
"""Rejected lines and warnings listed in the table; JSON has them all."""


def import_summary(summary: ImportSummary) -> dict[str, Any]:
    """Keys: lines, accounts_created, accounts_updated, emails_added, emails_updated,
    domains_added, unchanged, rejected [{line, error}], warnings [{line, warning}],
    warnings_total."""
    return {
        "lines": summary.lines,
        "accounts_created": summary.accounts_created,
        "accounts_updated": summary.accounts_updated,
        "emails_added": summary.emails_added,
        "emails_updated": summary.emails_updated,
        "domains_added": summary.domains_added,
        "unchanged": summary.unchanged,
        "rejected": [{"line": p.line, "error": p.message} for p in summary.rejected],
        "warnings": [{"line": p.line, "warning": p.message} for p in summary.warnings],
        "warnings_total": summary.warnings_total,
    }


def print_import_summary(console: Console, summary: ImportSummary) -> None:
    good = summary.lines - len(summary.rejected)
    console.print(
        f"{summary.lines} lines read: {good} good, {len(summary.rejected)} rejected",
        highlight=False,
    )
    console.print(
        f"  accounts: {summary.accounts_created} created, {summary.accounts_updated} updated\n"
        f"  addresses: {summary.emails_added} added, {summary.emails_updated} updated\n"
        f"  domains: {summary.domains_added} added (due for a check now)\n"
        f"  unchanged lines: {summary.unchanged}",
        highlight=False,
    )
    _problems(console, "rejected", "bold red", [(p.line, p.message) for p in summary.rejected])
    shown = [(p.line, p.message) for p in summary.warnings]
    _problems(console, "warnings", "yellow", shown, total=summary.warnings_total)


def _problems(
    console: Console, title: str, style: str, rows: list[tuple[int, str]], total: int = -1
) -> None:
    total = len(rows) if total < 0 else total
    if not total:
        return
    table = Table(title=f"{title} ({total})", title_style=style, header_style="bold", box=None)
    table.add_column("line", justify="right")
    table.add_column("reason", overflow="fold")
    for line, message in rows[:_SHOWN_PROBLEMS]:
        table.add_row(str(line), message)
    console.print(table)
    if total > _SHOWN_PROBLEMS:
        console.print(f"  … and {total - _SHOWN_PROBLEMS} more (see --format json)")


def _email(email: EmailView) -> dict[str, Any]:
    return {
        "address": email.address,
        "domain": email.domain,
        "primary": email.primary,
        "verified": email.verified,
        "verified_at": isoformat(email.verified_at),
        "unverified_at": isoformat(email.unverified_at),
        "unverify_reason": email.unverify_reason,
        "reason": email.reason,
        "verdict": email.verdict,
    }


def account(view: AccountView) -> dict[str, Any]:
    """Keys: username, totp, projects, emails [{address, domain, primary, verified,
    verified_at, unverified_at, unverify_reason, reason, verdict}]."""
    return {
        "username": view.username,
        "totp": view.totp,
        "projects": list(view.projects),
        "emails": [_email(email) for email in view.emails],
    }


def _state(email: EmailView) -> Text:
    if email.verified:
        return Text("verified", style="green")
    if email.unverify_reason:
        return Text(f"unverified ({email.unverify_reason})", style="bold red")
    return Text("not verified", style="dim")


def print_account(console: Console, view: AccountView) -> None:
    totp = Text("2FA on", style="green") if view.totp else Text("no 2FA", style="yellow")
    console.print(Text.assemble((view.username, "bold"), "  ", totp))
    if view.projects:
        console.print(f"projects: {', '.join(view.projects)}", highlight=False)
    if not view.emails:
        console.print("no addresses")
        return
    table = Table(header_style="bold", box=None, padding=(0, 1))
    for column in ("address", "state", "verified", "domain", "verdict", "reason"):
        table.add_column(column, overflow="fold")
    for email in view.emails:
        domain = to_unicode(email.domain)
        if email.free_provider:
            domain += " (free provider)"
        table.add_row(
            email.address + (" *" if email.primary else ""),
            _state(email),
            (isoformat(email.verified_at) or "-")[:10],
            domain,
            email.verdict or "-",
            email.reason or "",
        )
    console.print(table)
    console.print("* primary", style="dim")
