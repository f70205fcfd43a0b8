"""What every command shares: consoles, output formats, exit codes, settings."""

from __future__ import annotations

import enum

import typer
from rich.console import Console

from lapsewatch.config import ConfigError, Settings
from lapsewatch.logs import configure_logging
from lapsewatch.verdict import Verdict

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DANGEROUS",
    "EXIT_OK",
    "EXIT_UNKNOWN",
    "Format",
    "console",
    "errors",
    "exit_code",
    "fail",
    "load_settings",
]

EXIT_OK, EXIT_DANGEROUS, EXIT_BAD_INPUT, EXIT_UNKNOWN = 0, 1, 2, 3

console = Console()
errors = Console(stderr=True)


class Format(enum.StrEnum):
    table = "table"
    json = "json"


def fail(message: str) -> typer.Exit:
    """Print ``message`` as an error; the caller raises the returned exit (code 2)."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(EXIT_BAD_INPUT)


def load_settings() -> Settings:
    try:
        configure_logging()  # LAPSEWATCH_LOG_FORMAT / _LOG_LEVEL; nothing when unset
        return Settings.from_env()
    except (ConfigError, ValueError) as exc:
        raise fail(str(exc)) from None


def exit_code(verdict: Verdict) -> int:
    """0 trusted, 1 dangerous, 3 unknown."""
    if verdict is Verdict.UNKNOWN:
        return EXIT_UNKNOWN
    return EXIT_DANGEROUS if verdict.dangerous else EXIT_OK
