"""The command line imports only what the command it runs needs.

Each ``lapsewatch`` run used to import every sub-command, the web app, the cycle and
every source (2 s before anything happened; the suite spent most of its CLI tests
on it). These tests hold the lazy loading to its promise.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lapsewatch.cli import COMMANDS, app, load_command


def test_every_command_loads_under_its_name() -> None:
    for name in COMMANDS:
        command = load_command(name)
        assert command.name == name
        assert command.help, name


def test_help_lists_every_command_in_order() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    places = [result.output.index(f"│ {name} ") for name in COMMANDS]  # a row of its own
    assert places == sorted(places)


def test_an_unknown_command_is_a_usage_error_with_a_suggestion() -> None:
    result = CliRunner().invoke(app, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output
    typo = CliRunner().invoke(app, ["chek"])
    assert typo.exit_code == 2
    assert "Did you mean 'check'?" in typo.output


def _imported_by(*args: str) -> set[str]:
    """The top-level packages and lapsewatch modules a run of ``lapsewatch ARGS`` imported."""
    code = (
        "import json, sys\n"
        "from lapsewatch.cli import app\n"
        "try:\n"
        f"    app({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    return set(json.loads(run.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("args", "absent"),
    [
        (("accounts", "show", "--help"), ("fastapi", "aiohttp", "lapsewatch.sources", "celery")),
        (("scan", "--help"), ("fastapi", "alembic", "celery", "lapsewatch.web")),
        (("report", "--help"), ("fastapi", "aiohttp", "lapsewatch.sources", "lapsewatch.web")),
        (("admin", "api-keys", "--help"), ("fastapi", "aiohttp", "lapsewatch.cycle.apply")),
    ],
)
def test_a_command_imports_only_its_own_part(
    args: tuple[str, ...], absent: tuple[str, ...]
) -> None:
    imported = _imported_by(*args)
    assert COMMANDS[args[0]][0] in imported  # the command's own module
    assert not [name for name in absent if name in imported]
