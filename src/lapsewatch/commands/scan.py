"""``lapsewatch scan``: which of my dependencies (PyPI and npm) could be taken over
through a lapsed maintainer domain?

Exit codes: 0 nothing in ``--fail-on`` was found, 1 something was (by default a
dangerous verdict), 2 bad input or configuration. ``unknown`` does not fail the
run by default: being offline must not break a build, and the run says clearly
how many domains could not be checked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from lapsewatch import domains
from lapsewatch.commands._common import (
    EXIT_DANGEROUS,
    EXIT_OK,
    console,
    errors,
    fail,
    load_settings,
)
from lapsewatch.formats.scan_formats import FORMATS
from lapsewatch.scan import (
    DEFAULT_INDEX_URL,
    DiskCache,
    ScanInputError,
    ScanOptions,
    ScanReport,
    collect,
    default_cache_dir,
    parse_fail_on,
)
from lapsewatch.scan import scan as run_scan
from lapsewatch.scan.index import check_index_url
from lapsewatch.scan.inputs import is_input_path
from lapsewatch.scan.npm import DEFAULT_NPM_REGISTRY_URL, check_registry_url
from lapsewatch.scan.run import Phase

__all__ = ["scan"]


_PHASES: dict[Phase, str] = {"metadata": "reading metadata", "domains": "checking domains"}


class _Bar:
    """The scan's progress as a Rich bar on stderr (drawn only on a terminal)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[Phase, TaskID] = {}

    def start(self, phase: Phase, total: int) -> None:
        if total:
            self._tasks[phase] = self._progress.add_task(_PHASES[phase], total=total)

    def advance(self, phase: Phase) -> None:
        if phase in self._tasks:
            self._progress.advance(self._tasks[phase])


def _warn(message: str) -> None:
    errors.print(f"[yellow]warning:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def _format_name(name: str) -> str:
    """``--format``: one of the registry's formats (lapsewatch.formats.scan_formats)."""
    if name not in FORMATS:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(FORMATS)}")
    return name


def _print(report: ScanReport, output: str) -> None:
    sys.stdout.write(FORMATS[output](report, console))
    sys.stdout.flush()


def scan(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="What to scan: a directory (its known dependency files), a file "
            "(requirements*.txt, a lock file, package.json), a PyPI package NAME or "
            "NAME==VERSION (read from this environment when installed in that version, else "
            "from the index), or an npm package npm:NAME or npm:NAME@VERSION-OR-RANGE.",
            show_default=False,
        ),
    ] = None,
    requirement: Annotated[
        list[Path] | None,
        typer.Option(
            "-r",
            "--requirement",
            help="A pip requirement file (repeatable); -r includes are followed.",
            show_default=False,
        ),
    ] = None,
    lock: Annotated[
        list[Path] | None,
        typer.Option(
            help="A lock file (repeatable): pylock.toml, pylock.NAME.toml, uv.lock, poetry.lock, "
            "package-lock.json, npm-shrinkwrap.json, pnpm-lock.yaml, yarn.lock.",
            show_default=False,
        ),
    ] = None,
    dist: Annotated[
        list[Path] | None,
        typer.Option(help="A wheel or sdist file (repeatable).", show_default=False),
    ] = None,
    installed: Annotated[
        bool, typer.Option("--installed", help="Every distribution installed in this environment.")
    ] = False,
    index_url: Annotated[
        str, typer.Option(help="Base URL of an index speaking PyPI's JSON API.")
    ] = DEFAULT_INDEX_URL,
    npm_registry_url: Annotated[
        str,
        typer.Option(
            envvar="LAPSEWATCH_NPM_REGISTRY_URL",
            help="Base URL of the npm registry; packuments are read at BASE/NAME.",
        ),
    ] = DEFAULT_NPM_REGISTRY_URL,
    output: Annotated[
        str,
        typer.Option(
            "--format", parser=_format_name, metavar="|".join(FORMATS), help="Output format."
        ),
    ] = next(iter(FORMATS)),
    fail_on: Annotated[
        str,
        typer.Option(
            help="Comma list of verdicts that make the run exit 1: 'dangerous' (expiring, "
            "redemption, pending_delete, available, reregistered, for_sale, mail_host_lapsed), "
            "any verdict such as unknown or unparseable, 'all' or 'none'.",
        ),
    ] = "dangerous",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where answers are cached (default: $XDG_CACHE_HOME/lapsewatch/scan).",
            show_default=False,
        ),
    ] = None,
    cache_ttl: Annotated[
        float, typer.Option(min=0.0, help="Hours a cached answer is reused.")
    ] = 24.0,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the cache.")
    ] = False,
) -> None:
    """Check the maintainer addresses of PyPI and npm packages for lapsing or taken-over domains.

    Exit codes: 0 nothing in --fail-on was found, 1 something was, 2 bad input.
    """
    settings = load_settings()
    try:
        failing = parse_fail_on(fail_on)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        index = check_index_url(index_url)
    except ValueError as exc:
        raise fail(f"--index-url: {exc}") from None
    try:
        registry = check_registry_url(npm_registry_url)
    except ValueError as exc:
        raise fail(f"--npm-registry-url: {exc}") from None
    try:
        free = domains.load_free_providers(settings.free_providers_file)
    except (OSError, domains.DomainError) as exc:
        raise fail(f"LAPSEWATCH_FREE_PROVIDERS: {exc}") from None
    if not (names or requirement or lock or dist or installed):
        raise fail(
            "nothing to scan: give a directory or file, package names, -r FILE, --lock FILE, "
            "--dist FILE or --installed"
        )
    arguments = names or []
    paths = [Path(a) for a in arguments if is_input_path(a)]
    try:
        inputs = collect(
            requirements=requirement or (),
            locks=lock or (),
            dists=dist or (),
            names=[a for a in arguments if not is_input_path(a)],
            paths=paths,
            include_installed=installed,
            index_url=index,
            npm_registry_url=registry,
        )
    except ScanInputError as exc:
        raise fail(str(exc)) from None

    cache = None
    if not no_cache:
        cache = DiskCache(cache_dir or default_cache_dir(), cache_ttl * 3600.0, warn=_warn)
    options = ScanOptions(
        settings, index_url=index, cache=cache, free_providers=free, npm_registry_url=registry
    )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=errors,
        transient=True,
        disable=not errors.is_terminal,
    )
    with progress:
        report = run_scan(inputs, options, _Bar(progress))

    for note in report.notes:
        errors.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    for message in (report.index_message, report.offline_message):
        if message:
            _warn(message)
    _print(report, output)
    raise typer.Exit(EXIT_DANGEROUS if report.failing(failing) else EXIT_OK)
