"""Running ``lapsewatch`` from a test: in the test's own process, or as a real process.

A real process costs 1 to 3 s of CPU before the command does anything (Python, Typer,
SQLAlchemy, aiohttp, the sources), and the suite ran about two hundred of them: that
was more than half of its CPU. ``lapsewatch()`` runs the same Click command in this
process instead, with the environment, working directory, streams and exit code the
real process would have. ``lapsewatch(..., process=True)`` still starts a real process
where the process is the point: the imports of four commands (``test_cli_startup.py``),
the help and the demo's main job, a domain's and a tree's table, ``scan --installed``,
the daily job's first ``check``, and the tests that kill, interrupt or time a process.

What the in-process run keeps from a real one:

- the environment: ``LAPSEWATCH_*`` from the test's own environment are removed, the
  given variables set, and everything restored afterwards;
- stdout and stderr apart, and the exit code, including ``typer.Exit`` and ``sys.exit``;
- Rich's consoles, made again under the run's environment (``COLUMNS`` sets their width),
  and again after it;
- logging: no handler on the root logger during the run (a warning reaches stderr as in
  a new process); pytest's handlers back afterwards, and none the command added.

What it cannot keep: the CPU of a process of its own. The command and the local world's
server threads share this process's interpreter lock, so an answer takes longer on a
loaded machine: the tests that run commands here give sources 2 s, where 1 s timed out
in CI, and their worlds hang longer than that.

Nor a crash. An exception that escapes the command is raised in the
test (where a real process would print a traceback and exit 1), so a crash fails the
test rather than pass as exit code 1. Prometheus' multiprocess directory is chosen when
``lapsewatch.metrics`` is first imported; a run that sets it must use a real process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

__all__ = ["SOURCE_LIMITS", "Ran", "lapsewatch", "process_environment"]

SOURCE_LIMITS = {"LAPSEWATCH_TIMEOUT": "2", "LAPSEWATCH_ATTEMPTS": "2"}
"""The sources' timeout and attempts for commands run here (2 s: see above)."""

_PROCESS_ONLY = ("LAPSEWATCH_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR")


@dataclass(frozen=True)
class Ran:
    """What a run left: the same fields a ``subprocess.CompletedProcess`` has."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def lapsewatch(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    process: bool = False,
    timeout: float = 120,
) -> Ran:
    """``lapsewatch ARGS`` with the test's environment minus ``LAPSEWATCH_*``, plus ``env``."""
    given = dict(env or {})
    if process:
        return _in_a_process(list(args), given, cwd, input, timeout)
    process_only = sorted(set(given) & set(_PROCESS_ONLY))
    if process_only:
        raise ValueError(f"{process_only} are read at import: run with process=True")
    return _here(list(args), given, cwd, input)


def _in_a_process(
    args: list[str], given: dict[str, str], cwd: Path | None, input: str | None, timeout: float
) -> Ran:
    done = subprocess.run(
        [sys.executable, "-m", "lapsewatch", *args],
        env=process_environment(given),
        input=input,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Ran(args, done.returncode, done.stdout, done.stderr)


def process_environment(given: Mapping[str, str]) -> dict[str, str]:
    """A child process's whole environment: this one's without ``LAPSEWATCH_*``, plus
    ``given``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEWATCH_")}
    return {**environ, **given}


def _here(args: list[str], given: dict[str, str], cwd: Path | None, input: str | None) -> Ran:
    from lapsewatch.cli import app

    try:
        with _environment(given), _directory(cwd), _logging_as_in_a_process():
            _fresh_consoles()
            result = CliRunner().invoke(
                app, args, input=input, catch_exceptions=False, prog_name="lapsewatch"
            )
    finally:
        _fresh_consoles()  # under the test's own environment again
    return Ran(args, result.exit_code, result.stdout, result.stderr)


@contextmanager
def _environment(given: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    for name in [k for k in os.environ if k.startswith("LAPSEWATCH_")]:
        del os.environ[name]
    os.environ.update(given)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _directory(cwd: Path | None) -> Iterator[None]:
    if cwd is None:
        yield
        return
    before = Path.cwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def _logging_as_in_a_process() -> Iterator[None]:
    """The root logger as a new process has it: no handler (pytest's are set aside), so
    warnings reach stderr through ``logging.lastResort``, as they would; then pytest's
    handlers back, and none the command added."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def _fresh_consoles() -> None:
    """Rich reads ``COLUMNS`` and the terminal when a console is made: make the commands'
    two consoles again, as a new process would under this environment."""
    from lapsewatch.commands import _common

    _common.console.__init__()  # type: ignore[misc]
    _common.errors.__init__(stderr=True)  # type: ignore[misc]
