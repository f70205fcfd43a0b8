"""The scan's output formats: one interface, and ``--format`` offers what the registry has."""

from __future__ import annotations

import json

from rich.console import Console
from typer.testing import CliRunner

from lapsewatch.cli import app
from lapsewatch.formats.scan_formats import FORMATS
from lapsewatch.scan.findings import ScanReport


def test_format_option_offers_the_registry() -> None:
    result = CliRunner().invoke(app, ["scan", "--format", "nope", "x"])
    assert result.exit_code == 2
    for name in FORMATS:
        assert name in result.output


def test_every_format_renders_text_ending_a_line() -> None:
    report = ScanReport(findings=(), notes=("a note",), packages=0)
    console = Console(width=100, color_system=None)
    for name, render in FORMATS.items():
        text = render(report, console)
        assert text.endswith("\n"), name
        if name in ("json", "sarif"):
            json.loads(text)
    assert json.loads(FORMATS["json"](report, console)) == []
