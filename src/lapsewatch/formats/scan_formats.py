"""The output formats of ``lapsewatch scan``: one interface, one registry.

A format turns a :class:`~lapsewatch.scan.findings.ScanReport` into the text written
to stdout (the console gives a terminal's width and colours to those that use them).
As pip-audit's ``VulnerabilityFormat``: a new format is a module with a ``render``
function plus one entry in :data:`FORMATS`; ``--format`` offers what is there.
"""

from __future__ import annotations

from typing import Protocol

from rich.console import Console

from lapsewatch.formats import scan_json, scan_markdown, scan_sarif, scan_table
from lapsewatch.scan.findings import ScanReport

__all__ = ["FORMATS", "ScanFormatter"]


class ScanFormatter(Protocol):
    def __call__(self, report: ScanReport, console: Console) -> str: ...


FORMATS: dict[str, ScanFormatter] = {
    "table": scan_table.render,
    "json": scan_json.render,
    "sarif": scan_sarif.render,
    "markdown": scan_markdown.render,
}
"""By ``--format`` name; the first is the default."""
