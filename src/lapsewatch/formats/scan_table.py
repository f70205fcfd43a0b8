"""``lapsewatch scan`` on a terminal: one Rich table, worst findings first, and a summary."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lapsewatch.domains import to_unicode
from lapsewatch.scan.findings import Finding, ScanReport, Status

__all__ = ["print_report", "render", "status_style", "summary_line"]


def status_style(status: Status) -> str:
    if status.dangerous:
        return "bold red"
    if status.unchecked:
        return "bold yellow"
    return "yellow" if status is Status.UNPARSEABLE else "green"


def summary_line(report: ScanReport) -> str:
    """``3 dangerous, 1 unknown, 12 registered … in 14 packages (6 domains checked, 2 cached)``."""
    counts = report.counts()
    dangerous = sum(n for s, n in counts.items() if s.dangerous)
    parts = [f"{dangerous} dangerous"] if dangerous else ["nothing dangerous"]
    parts += [
        f"{counts[s]} {s.value.replace('_', ' ')}"
        for s in sorted(counts, key=lambda s: (s.severity, s.value))
        if not s.dangerous
    ]
    return (
        f"{', '.join(parts)} in {report.packages} packages "
        f"({report.domains_asked} domains checked, {report.domains_cached} from the cache)"
    )


def _sort_key(finding: Finding) -> tuple[int, str, str]:
    return finding.status.severity, finding.package.lower(), finding.address or ""


def print_report(console: Console, report: ScanReport) -> None:
    table = Table(header_style="bold", show_lines=False)
    for column in ("package", "version", "address", "domain", "verdict", "reason"):
        table.add_column(column, overflow="fold")
    for finding in sorted(report.findings, key=_sort_key):
        table.add_row(
            finding.qualified_name,
            finding.version or "-",
            finding.address or "-",
            to_unicode(finding.domain) if finding.domain else "-",
            Text(finding.status.value, style=status_style(finding.status)),
            finding.reason,
        )
    if report.findings:
        console.print(table)
    console.print(summary_line(report), highlight=False)


def render(report: ScanReport, console: Console) -> str:
    """The table as ``console`` draws it (its width and colours), as text."""
    with console.capture() as captured:
        print_report(console, report)
    return captured.get()
