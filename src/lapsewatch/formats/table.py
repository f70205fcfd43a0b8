"""Human output with Rich: a verdict line and one row per source."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lapsewatch.dates import isoformat
from lapsewatch.domains import to_unicode
from lapsewatch.lookup import DomainReport
from lapsewatch.verdict import Verdict

__all__ = ["print_domain_report", "verdict_style"]


def verdict_style(verdict: Verdict) -> str:
    if verdict is Verdict.UNKNOWN:
        return "bold yellow"
    return "bold red" if verdict.dangerous else "bold green"


def print_domain_report(console: Console, report: DomainReport) -> None:
    decision = report.decision
    domain = report.parsed.domain
    shown = to_unicode(domain)
    name = domain if shown == domain else f"{shown} ({domain})"
    line = Text.assemble(
        (f"{name}: ", "bold"), (decision.verdict.value, verdict_style(decision.verdict))
    )
    console.print(line)
    console.print(f"  {decision.reason}", highlight=False)
    if report.parsed.address:
        console.print(f"  address: {report.parsed.address}", highlight=False)
    if not report.observations:
        return
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for column in ("source", "outcome", "status", "registered", "expires", "detail"):
        table.add_column(column, overflow="fold")
    for obs in report.observations:
        table.add_row(
            obs.source,
            obs.outcome.value,
            ", ".join(obs.status) or "-",
            (isoformat(obs.registered_at) or "-")[:10],
            (isoformat(obs.expires_at) or "-")[:10],
            obs.detail,
        )
    console.print(table)
