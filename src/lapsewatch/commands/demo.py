"""``lapsewatch demo``: the whole system offline, for people new to it."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from lapsewatch import demo as story
from lapsewatch.commands._common import Format, console, fail
from lapsewatch.formats import json as json_format
from lapsewatch.formats import table as table_format
from lapsewatch.formats.accounts import import_summary
from lapsewatch.formats.report import print_report
from lapsewatch.formats.report import report as report_data

__all__ = ["demo"]


class DnsKind(enum.StrEnum):
    builtin = "builtin"
    nsd = "nsd"


def demo(
    world: Annotated[
        bool, typer.Option("--world", help="Only start the local world and print its settings.")
    ] = False,
    all_domains: Annotated[
        bool, typer.Option("--all-domains", help="Check every domain of the world, no registry.")
    ] = False,
    database: Annotated[
        str | None,
        typer.Option(help=f"Database URL for the demo registry; default ./{story.DEMO_DATABASE}."),
    ] = None,
    scenario: Annotated[
        Path | None, typer.Option(help="Scenario file (TOML); default: the shipped demo.")
    ] = None,
    dns: Annotated[DnsKind, typer.Option(help="DNS server for the world.")] = DnsKind.builtin,
    latency: Annotated[
        float, typer.Option(min=0, help="With --world: seconds added to every answer.")
    ] = 0.0,
    rate_limit: Annotated[
        float | None,
        typer.Option(min=0.1, help="With --world: requests/s each server admits (429 above)."),
    ] = None,
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Run the main job offline: a local world, a small registry in SQLite, one check cycle."""
    try:
        loaded = story.load_scenario(scenario) if scenario else story.demo_scenario()
    except (story.ScenarioError, OSError) as exc:
        raise fail(str(exc)) from None
    try:
        if world:
            _serve_world(story.World(loaded, dns=dns.value, latency=latency, rate_limit=rate_limit))
            return
        if all_domains:
            verified_at, reports = story.check_world(loaded, dns=dns.value)
            if output is Format.json:
                data = [json_format.domain_report(r) for r in reports]
                console.print_json(json_format.dumps(data))
            else:
                told = {r.parsed.domain: story.world_says(loaded, r.parsed.domain) for r in reports}
                table_format.print_story(console, reports, told, verified_at)
            return
        if database is None:
            Path(story.DEMO_DATABASE).unlink(missing_ok=True)  # a fresh registry every run
            for suffix in ("-wal", "-shm"):
                Path(story.DEMO_DATABASE + suffix).unlink(missing_ok=True)
        url = database or f"sqlite:///{story.DEMO_DATABASE}"
        result = story.run_story(loaded, database_url=url, dns=dns.value)
    except story.NsdError as exc:
        raise fail(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:
        raise fail(f"the demo registry could not be written: {exc}") from None
    if output is Format.json:
        console.print_json(
            json_format.dumps(
                {
                    "database": result.database_url,
                    "import": import_summary(result.imported),
                    "cycle": result.cycle.to_dict(),
                    "domains": [o.__dict__ for o in result.domains],
                    "report": report_data(result.report),
                }
            )
        )
        return
    _print_story(result)


def _print_story(result: story.Story) -> None:
    imported = result.imported
    console.print(
        f"[bold]1.[/] Imported {imported.accounts_created} accounts with "
        f"{imported.emails_added} addresses into {result.database_url}.",
        highlight=False,
    )
    cycle = result.cycle
    console.print(
        f"[bold]2.[/] One check cycle against the local world: {cycle.checked} domains checked, "
        f"{cycle.unverified} addresses unverified, {cycle.errors} checks failed (kept verified, "
        "retried later).\n",
        highlight=False,
    )
    table_format.print_domain_outcomes(console, result.domains)
    console.print("\n[bold]3.[/] The report:\n")
    print_report(console, result.report)
    env = f"LAPSEWATCH_DATABASE_URL={result.database_url}"
    console.print(
        f"\nLook around: [bold]{env} lapsewatch accounts show bob[/] (or report, or "
        "check --all); [bold]lapsewatch demo --world[/] keeps the world running.",
        highlight=False,
    )


def _serve_world(world: story.World) -> None:
    """Run the world until Ctrl-C, printing the settings that point lapsewatch at it."""
    with world:
        console.print("[bold]The local world is running.[/] In another shell:\n")
        for key, value in sorted(world.env().items()):
            console.print(f"export {key}={value}", highlight=False, soft_wrap=True)
        console.print(f"\nDomains: {', '.join(sorted(world.scenario.domains))}", highlight=False)
        console.print(
            "Then try: lapsewatch domain m@redeeming.test (RDAP), m@lapsed.wz (WHOIS), "
            "m@mailed.test (a lapsed mail host)\nCtrl-C stops the world.",
            highlight=False,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopped")
