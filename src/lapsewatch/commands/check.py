"""``lapsewatch check``: one check cycle over the due domains."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.exc import SQLAlchemyError

from lapsewatch.commands._common import Format, console, fail, load_settings
from lapsewatch.cycle.apply import CheckResult
from lapsewatch.cycle.run import DEFAULT_BATCH, run_cycle
from lapsewatch.formats import json as json_format
from lapsewatch.store import make_engine, upgrade
from lapsewatch.store.db import DatabaseTimeout, DbTimeouts, describe, timed_out

__all__ = ["EXIT_UNVERIFIED", "check"]

EXIT_UNVERIFIED = 1
"""``check`` exits 1 when it unverified (``--dry-run``: would unverify) an address, 0
otherwise; failed domain checks are counted, retried later, and never change it."""


def check(
    limit: Annotated[
        int, typer.Option(min=1, help="At most this many domains in this run (a bounded batch).")
    ] = DEFAULT_BATCH,
    everything: Annotated[
        bool,
        typer.Option("--all", help="Check every domain behind a verified address, due or not."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and report, change nothing.")
    ] = False,
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="Enqueue the due domains for Celery workers instead of checking here.",
        ),
    ] = False,
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Check the due domains and unverify addresses on dangerous ones.

    Exits 0, or 1 when an address was unverified; 2 on a configuration or
    database error (what was committed stays, the rest stays due).
    """
    settings = load_settings()
    try:
        # A batch run: once one of the database's timeouts fired, the run stops with it
        # instead of waiting out the same timeout again on each retry.
        engine = make_engine(
            settings.database_url,
            timeouts=DbTimeouts.from_settings(settings),
            stop_on_timeout=True,
        )
        upgrade(engine)
    except DatabaseTimeout as exc:
        raise fail(f"database timeout: {exc}") from None
    except SQLAlchemyError as exc:
        raise fail(f"database {settings.database_url}: {describe(exc)}") from None
    if distributed:
        from lapsewatch.jobs import enqueue_due

        try:
            queued = enqueue_due(settings, engine, limit=limit, everything=everything)
        except Exception as exc:  # broker errors come in many types
            raise fail(f"could not enqueue on {settings.broker_url}: {exc}") from None
        data = {"queued_domains": queued.domains, "tasks": queued.tasks}
        if output is Format.json:
            console.print_json(json_format.dumps(data))
        else:
            console.print(f"queued {queued.domains} domains in {queued.tasks} tasks")
        return

    progress = Progress(
        TextColumn("checking"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unverified]} unverified"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal or output is Format.json,
    )
    task = progress.add_task("check", total=0, unverified=0)
    unverified = 0

    def on_start(total: int) -> None:
        progress.update(task, total=total)

    def on_result(_result: CheckResult, count: int) -> None:
        nonlocal unverified
        unverified += count
        progress.update(task, advance=1, unverified=unverified)

    try:
        with progress:
            summary = run_cycle(
                settings,
                engine,
                limit=limit,
                everything=everything,
                dry_run=dry_run,
                on_start=on_start,
                on_result=on_result,
            )
    except Exception as exc:  # a bug must not print a traceback at an operator
        # The first timeout is the cause; what failed after it only says so less clearly.
        timeout = timed_out(engine) or (exc if isinstance(exc, DatabaseTimeout) else None)
        if timeout is not None:
            what = f"database timeout: {timeout}"
        elif isinstance(exc, SQLAlchemyError):
            what = f"database error: {describe(exc)}"
        else:
            what = None
        if what is not None:
            raise fail(
                f"{what}. What was applied stays; the domains not yet applied stay due "
                "for the next run"
            ) from None
        raise fail(
            f"the run stopped ({type(exc).__name__}: {exc}); what was applied stays, "
            "the rest stays due for the next run"
        ) from None
    finally:
        engine.dispose()
    if output is Format.json:
        console.print_json(json_format.dumps(summary.to_dict()))
    else:
        verb = "would unverify" if dry_run else "unverified"
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(summary.verdicts.items())) or "none"
        pending = (
            f"; {summary.pending} dangerous verdicts on thin evidence wait for a confirming check"
            if summary.pending
            else ""
        )
        console.print(
            f"checked {summary.checked} domains ({verdicts}); {verb} {summary.unverified} "
            f"addresses; {summary.errors} checks failed and will be retried{pending}",
            highlight=False,
        )
    if summary.unverified:
        raise typer.Exit(EXIT_UNVERIFIED)
