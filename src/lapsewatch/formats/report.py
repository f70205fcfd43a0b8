"""Output for ``lapsewatch report``: a JSON dict (the contract) and Rich tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lapsewatch.dates import isoformat
from lapsewatch.domains import to_unicode
from lapsewatch.report import NEVER_CHECKED, Report
from lapsewatch.verdict import Verdict

__all__ = ["print_report", "report"]


def report(data: Report) -> dict[str, Any]:
    """Keys: generated_at, addresses, unverified_by_reason, domains_total,
    domains_by_verdict, domains_due, next_due [{domain, next_due_at, last_verdict}],
    accounts_at_risk [{username, address, domain}], accounts_at_risk_total."""
    counts = data.addresses
    return {
        "generated_at": isoformat(data.generated_at),
        "addresses": {
            "total": counts.total,
            "verified": counts.verified,
            "unverified_by_lapsewatch": counts.unverified_by_lapsewatch,
            "never_verified": counts.never_verified,
            "unverified_other": counts.unverified_other,
            "free_provider": counts.free_provider,
            "free_provider_verified": counts.free_provider_verified,
        },
        "unverified_by_reason": dict(data.unverified_by_reason),
        "domains_total": data.domains_total,
        "domains_by_verdict": dict(data.domains_by_verdict),
        "domains_due": data.domains_due,
        "next_due": [
            {
                "domain": due.domain,
                "next_due_at": isoformat(due.next_due_at),
                "last_verdict": due.last_verdict,
            }
            for due in data.next_due
        ],
        "accounts_at_risk": [
            {"username": risk.username, "address": risk.address, "domain": risk.domain}
            for risk in data.accounts_at_risk
        ],
        "accounts_at_risk_total": data.accounts_at_risk_total,
    }


def _verdict(name: str | None) -> Text:
    if name is None or name == NEVER_CHECKED:
        return Text(name or "-", style="dim")
    try:
        verdict = Verdict(name)
    except ValueError:
        return Text(name)
    if verdict is Verdict.UNKNOWN:
        return Text(name, style="yellow")
    return Text(name, style="red" if verdict.dangerous else "green")


def _counts(console: Console, title: str, rows: list[tuple[str | Text, int]]) -> None:
    console.print(Text(title, style="bold underline"))
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column("")
    table.add_column("count", justify="right")
    for label, count in rows:
        table.add_row(label, f"{count:,}")
    console.print(table)


def print_report(console: Console, data: Report) -> None:
    counts = data.addresses
    _counts(
        console,
        "Addresses",
        [
            ("verified", counts.verified),
            (Text("unverified by lapsewatch", style="red"), counts.unverified_by_lapsewatch),
            ("never verified", counts.never_verified),
            ("unverified otherwise", counts.unverified_other),
            (Text("total", style="bold"), counts.total),
            ("at free providers (not checked)", counts.free_provider),
            ("  of which verified", counts.free_provider_verified),
        ],
    )
    if data.unverified_by_reason:
        _counts(
            console,
            "Unverified by reason",
            [(_verdict(reason), n) for reason, n in data.unverified_by_reason],
        )
    rows: list[tuple[str | Text, int]] = [(_verdict(v), n) for v, n in data.domains_by_verdict]
    rows.append((Text("total", style="bold"), data.domains_total))
    _counts(console, "Domains by last verdict", rows)

    console.print(Text(f"Next checks ({data.domains_due:,} due now)", style="bold underline"))
    table = Table(header_style="bold", box=None, padding=(0, 1))
    for column in ("domain", "due", "last verdict"):
        table.add_column(column)
    for due in data.next_due:
        table.add_row(
            to_unicode(due.domain),
            isoformat(due.next_due_at) or Text("now (never checked)", style="yellow"),
            _verdict(due.last_verdict),
        )
    console.print(table)

    console.print(
        Text(
            f"Accounts at risk: {data.accounts_at_risk_total:,} "
            "(one verified address, on a custom domain, no 2FA)",
            style="bold underline",
        )
    )
    table = Table(header_style="bold", box=None, padding=(0, 1))
    for column in ("username", "address", "domain"):
        table.add_column(column, overflow="fold")
    for risk in data.accounts_at_risk:
        table.add_row(risk.username, risk.address, to_unicode(risk.domain))
    console.print(table)
    hidden = data.accounts_at_risk_total - len(data.accounts_at_risk)
    if hidden > 0:
        console.print(f"  … and {hidden:,} more (raise --at-risk-limit or use --format json)")
