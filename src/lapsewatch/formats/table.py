"""Human output with Rich: a verdict line and one row per source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lapsewatch.dates import isoformat
from lapsewatch.domains import to_unicode
from lapsewatch.lookup import DomainReport
from lapsewatch.verdict import Verdict

__all__ = ["print_domain_outcomes", "print_domain_report", "print_story", "verdict_style"]


class DomainOutcomeLike(Protocol):
    @property
    def domain(self) -> str: ...
    @property
    def verdict(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...


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
    for mail in decision.mail_hosts:
        console.print(
            Text.assemble(
                f"  mail host {mail.host} on {mail.domain}: ",
                (mail.decision.verdict.value, verdict_style(mail.decision.verdict)),
            ),
            highlight=False,
        )
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


def print_story(
    console: Console,
    reports: list[DomainReport],
    world_says: Mapping[str, str],
    verified_at: datetime,
) -> None:
    """The demo's table: what the world was told (``world_says``, by domain; written by
    :func:`lapsewatch.demo.world_says`), and what lapsewatch concluded."""
    table = Table(
        title=f"Addresses verified {verified_at.date()}, checked now",
        header_style="bold",
        show_lines=False,
    )
    for column in ("domain", "world says", "verdict", "reason"):
        table.add_column(column, overflow="fold")
    for report in reports:
        told = world_says.get(report.parsed.domain, "-")
        verdict = report.decision.verdict
        table.add_row(
            report.parsed.domain,
            told,
            Text(verdict.value, style=verdict_style(verdict)),
            report.decision.reason,
        )
    console.print(table)
    dangerous = sum(r.decision.verdict.dangerous for r in reports)
    unknown = sum(r.decision.verdict is Verdict.UNKNOWN for r in reports)
    console.print(
        f"{len(reports)} domains: {dangerous} dangerous (their addresses would be unverified), "
        f"{unknown} unknown (kept verified, retried later), "
        f"{len(reports) - dangerous - unknown} registered.",
        highlight=False,
    )


def print_domain_outcomes(console: Console, outcomes: Sequence[DomainOutcomeLike]) -> None:
    """Each domain of the registry with its verdict after the cycle."""
    table = Table(header_style="bold")
    for column in ("domain", "verdict", "reason"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        verdict = Verdict(outcome.verdict) if outcome.verdict else None
        table.add_row(
            outcome.domain,
            Text(verdict.value, style=verdict_style(verdict)) if verdict else Text("not checked"),
            outcome.reason or "",
        )
    console.print(table)
