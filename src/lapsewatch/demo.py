"""The offline story for newcomers: the main job on the embedded default.

A local world (RDAP, DNS, Fastly on loopback) stands in for the internet; a
small registry is imported into SQLite; one check cycle runs; the report says
what happened. Nothing leaves the machine: the sources are pointed at the
world through the same ``LAPSEWATCH_*`` variables an operator would set.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from importlib import resources

from sqlalchemy import select

from lapsewatch.accounts import ImportSummary, import_accounts
from lapsewatch.config import Settings
from lapsewatch.cycle import CycleSummary, run_cycle
from lapsewatch.lookup import DomainReport, check_all
from lapsewatch.report import Report, build_report
from lapsewatch.store import Domain, make_engine, make_sessionmaker, upgrade
from lapsewatch.world import (
    DnsBackend,
    NsdError,
    Scenario,
    ScenarioError,
    World,
    demo_scenario,
    load_scenario,
)

# This module is the demo's one door to the local world (``lapsewatch.world``, a dev/demo
# package no other product module imports: pyproject.toml's import-linter contracts). The
# ``demo`` command reaches the world through it, hence the world's names re-exported here.
__all__ = [
    "DEMO_DATABASE",
    "DEMO_VERIFIED_AGO",
    "DnsBackend",
    "DomainOutcome",
    "NsdError",
    "Scenario",
    "ScenarioError",
    "Story",
    "World",
    "check_world",
    "demo_scenario",
    "demo_settings",
    "load_scenario",
    "run_story",
    "world_says",
]

DEMO_DATABASE = "lapsewatch-demo.db"
DEMO_VERIFIED_AGO = timedelta(days=365)
"""``check_world`` treats addresses as verified a year ago, so a fresh registration shows."""


@dataclass(frozen=True)
class DomainOutcome:
    domain: str
    verdict: str | None
    reason: str | None


@dataclass(frozen=True)
class Story:
    database_url: str
    imported: ImportSummary
    cycle: CycleSummary
    domains: tuple[DomainOutcome, ...]
    report: Report


def demo_settings(world: World) -> Settings:
    """Short timeouts: the world's slow server is slow on purpose."""
    return Settings.from_env({**world.env(), "LAPSEWATCH_TIMEOUT": "1", "LAPSEWATCH_ATTEMPTS": "2"})


def run_story(scenario: Scenario, *, database_url: str, dns: DnsBackend = "builtin") -> Story:
    """Import the demo registry into ``database_url``, run one cycle against the world."""
    accounts = resources.files("lapsewatch.world").joinpath("scenarios/demo-accounts.jsonl")
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with accounts.open("rb") as stream:
            imported = import_accounts(engine, stream, name="demo-accounts.jsonl")
        with World(scenario, dns=dns, hang_seconds=3.0) as world:
            settings = replace(demo_settings(world), database_url=database_url)
            cycle = run_cycle(settings, engine, limit=None)
        with make_sessionmaker(engine)() as session:
            outcomes = tuple(
                DomainOutcome(d.name, d.last_verdict, d.last_reason)
                for d in session.scalars(select(Domain).order_by(Domain.name))
            )
        report = build_report(engine, now=datetime.now(UTC))
    finally:
        engine.dispose()
    return Story(database_url, imported, cycle, outcomes, report)


def check_world(
    scenario: Scenario, *, dns: DnsBackend = "builtin"
) -> tuple[datetime, list[DomainReport]]:
    """Every domain of the scenario checked once, no database (``demo --all-domains``)."""
    verified_at = datetime.now(UTC) - DEMO_VERIFIED_AGO
    names = sorted(scenario.domains)
    with World(scenario, dns=dns, hang_seconds=3.0) as world:
        reports = asyncio.run(
            check_all(
                [f"maintainer@{name}" for name in names],
                demo_settings(world),
                verified_at=verified_at,
            )
        )
    return verified_at, reports


def world_says(scenario: Scenario, domain: str) -> str:
    """What the world was told about ``domain``: its state and faults (``-``: not in it)."""
    story = scenario.domain(domain)
    if story is None:
        return "-"
    told: str = story.state
    faults = [
        f"{k}={v}"
        for k, v in (("rdap", story.rdap), ("dns", story.dns), ("whois", story.whois_fault))
        if v != "ok"
    ]
    if story.mx:
        faults.append(f"mx {', '.join(story.mx)}")
    if faults:
        told += f" ({', '.join(faults)})"
    return told
