"""``lapsewatch scan --format markdown``: a report to post as a pull-request comment.

What needs action comes first (dangerous, then "could not check"); the full
list is folded away in ``<details>`` so a clean scan stays a two-line comment.
Cell text is escaped: package metadata is written by strangers.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console

from lapsewatch.formats.scan_table import summary_line
from lapsewatch.scan.findings import Finding, ScanReport

__all__ = ["render"]

_COLUMNS = ("Ecosystem", "Package", "Version", "Address", "Domain", "Verdict", "Reason")


def _cell(text: str | None) -> str:
    if not text:
        return "-"
    escaped = (
        text.replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("`", "\\`")
        .replace("*", "\\*")
        .replace("_", "\\_")
        .replace("[", "\\[")
    )
    return " ".join(escaped.split())


def _table(findings: Iterable[Finding]) -> list[str]:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for f in findings:
        verdict = f"**{f.status.value}**" if f.dangerous else f.status.value
        cells = (
            f.ecosystem,
            _cell(f.package),
            _cell(f.version),
            _cell(f.address),
            _cell(f.domain),
        )
        lines.append(f"| {' | '.join(cells)} | {verdict} | {_cell(f.reason)} |")
    return lines


def render(
    report: ScanReport, console: Console | None = None, *, title: str = "lapsewatch scan"
) -> str:
    """The report as GitHub-flavoured Markdown (a pull-request comment, a job summary)."""
    findings = sorted(report.findings, key=lambda f: (f.status.severity, f.package.lower()))
    dangerous = [f for f in findings if f.dangerous]
    unchecked = [f for f in findings if f.status.unchecked]
    lines = [f"## {title}", "", summary_line(report) + ".", ""]
    if dangerous:
        lines += [
            "### Maintainer addresses on dangerous domains",
            "",
            "Whoever controls such a domain can receive the password-reset mail of these "
            "maintainers' accounts and publish releases under their names.",
            "",
            *_table(dangerous),
            "",
        ]
    if unchecked:
        lines += ["### Could not check", "", *_table(unchecked), ""]
    for message in (report.index_message, report.offline_message):
        if message:
            lines += [f"> **Note:** {_cell(message)}", ""]
    if findings:
        lines += [
            f"<details><summary>All {len(findings)} findings</summary>",
            "",
            *_table(findings),
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines) + "\n"
