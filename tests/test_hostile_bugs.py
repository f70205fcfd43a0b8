"""Issue #11: any failure in one domain's check, even a bug, is that domain's error.

A whole ``lapsewatch check`` runs in a subprocess whose code has three bugs put in:
the RDAP source raises a plain ``RuntimeError`` for one domain, the verdict step
for another, the mail-host step for a third. Each is that domain's ``error``
observation, logged with the domain; the domain is retried after the error
backoff; every other domain is applied; the run exits 1 (it unverified the lapsed
domain's address), without a traceback. At the backoff's due time, the bugs gone,
the three domains are checked again and applied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.checker import CHECKER
from lapsewatch.schedule import Policy
from lapsewatch.store import Account, Domain, Email, ObservationRow, make_sessionmaker
from lapsewatch.world import DomainScenario, Scenario, World
from tests.cycle_support import settings_for

LONG_AGO = datetime(2019, 5, 1, tzinfo=UTC)
SOURCE_BUG = "buggy.test"  # the RDAP source raises
VERDICT_BUG = "undecided.test"  # the verdict step raises
MAIL_HOST_BUG = "mailbug.test"  # the mail-host step raises
BUGGY = {
    SOURCE_BUG: "a bug in a source",
    VERDICT_BUG: "a bug in the verdict",
    MAIL_HOST_BUG: "a bug in the mail-host step",
}
HEALTHY = ["fine0.test", "fine1.test"]
LAPSED = "gone.test"
NAMES = [*HEALTHY, LAPSED, *BUGGY]

BUGS = f"""
import sys

import lapsewatch.cycle.checker as checker
import lapsewatch.mail_hosts as mail_hosts
from lapsewatch.sources.rdap import RdapSource

observe = RdapSource.observe

async def buggy_observe(self, domain):
    if domain == {SOURCE_BUG!r}:
        raise RuntimeError({BUGGY[SOURCE_BUG]!r})
    return await observe(self, domain)

decide = checker.decide

def buggy_decide(domain, *args, **kwargs):
    if domain == {VERDICT_BUG!r}:
        raise RuntimeError({BUGGY[VERDICT_BUG]!r})
    return decide(domain, *args, **kwargs)

for_domain = mail_hosts.MailHostChecks.for_domain

async def buggy_for_domain(self, domain, *args, **kwargs):
    if domain == {MAIL_HOST_BUG!r}:
        raise RuntimeError({BUGGY[MAIL_HOST_BUG]!r})
    return await for_domain(self, domain, *args, **kwargs)

RdapSource.observe = buggy_observe
checker.decide = buggy_decide
mail_hosts.MailHostChecks.for_domain = buggy_for_domain

from lapsewatch.cli import main

sys.argv = ["lapsewatch", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    scenario = Scenario({}, ("test",)).with_domain(DomainScenario.make(LAPSED, "available"))
    for name in NAMES:
        if name != LAPSED:
            scenario = scenario.with_domain(DomainScenario.make(name, registered="2010-06-01"))
    with World(scenario) as running:
        yield running


def seed(engine: Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        for index, name in enumerate(NAMES):
            account = Account(username=f"user{index}", created_at=LONG_AGO, projects=[])
            account.emails.append(
                Email(
                    address=f"u{index}@{name}",
                    domain=name,
                    free_provider=False,
                    primary=True,
                    verified=True,
                    verified_at=LONG_AGO,
                )
            )
            session.add(account)
        session.add_all(Domain(name=name, consecutive_failures=0) for name in NAMES)


def observations(engine: Engine, domain: str) -> dict[str, tuple[str, str]]:
    """Source → (outcome, detail) of ``domain``'s observations."""
    with make_sessionmaker(engine)() as session:
        rows = session.scalars(select(ObservationRow).where(ObservationRow.domain == domain))
        return {row.source: (row.outcome, row.detail) for row in rows}


def domains(engine: Engine) -> dict[str, Domain]:
    with make_sessionmaker(engine)() as session:
        return {d.name: d for d in session.scalars(select(Domain))}


def test_a_bug_in_one_domains_check_is_that_domains_error(
    world: World, database_url: str, engine: Engine
) -> None:
    seed(engine)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEWATCH_")}
    env.update(world.env())
    env.update(
        {
            "LAPSEWATCH_DATABASE_URL": database_url,
            "LAPSEWATCH_SOURCES": "rdap,dns",
            "LAPSEWATCH_TIMEOUT": "3",  # roomy: a loaded machine must not add errors
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", BUGS, "check", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr  # it unverified gone.test's address
    summary = json.loads(done.stdout)
    assert summary["checked"] == len(NAMES)  # the cycle went on
    assert summary["errors"] == len(BUGGY)
    assert summary["unverified"] == 1
    # Logged with the domain, one line each (the traceback only at debug level).
    assert f"{SOURCE_BUG}: rdap failed: RuntimeError: {BUGGY[SOURCE_BUG]}" in done.stderr
    for name in (VERDICT_BUG, MAIL_HOST_BUG):
        assert f"{name}: no verdict: RuntimeError: {BUGGY[name]}" in done.stderr

    # The failing source is that source's error; the others' answers are kept.
    seen = observations(engine, SOURCE_BUG)
    assert seen["rdap"] == ("error", f"check failed: RuntimeError: {BUGGY[SOURCE_BUG]}")
    assert seen["dns"][0] == "answered"
    # A failure outside the sources is the checker's error observation.
    for name in (VERDICT_BUG, MAIL_HOST_BUG):
        seen = observations(engine, name)
        assert seen[CHECKER] == ("error", f"check failed: RuntimeError: {BUGGY[name]}")
        assert seen["rdap"][0] == seen["dns"][0] == "answered"

    rows = domains(engine)
    retry_first = Policy().retry_first
    for name in BUGGY:
        row = rows[name]
        assert row.last_verdict == "unknown", name
        assert row.consecutive_failures == 1, name
        assert row.last_checked_at is not None
        assert row.next_due_at == row.last_checked_at + retry_first, name  # the backoff
    assert BUGGY[VERDICT_BUG] in (rows[VERDICT_BUG].last_reason or "")
    assert all(rows[name].last_verdict == "registered" for name in HEALTHY)
    assert rows[LAPSED].last_verdict == "available"
    with make_sessionmaker(engine)() as session:
        verified = {e.domain: e.verified for e in session.scalars(select(Email))}
    assert verified == {name: name != LAPSED for name in NAMES}  # nobody on the bugs

    # Retried at the backoff's due time (the bugs gone: this process has none).
    due = max(rows[name].next_due_at or LONG_AGO for name in BUGGY)
    again = run_cycle(settings_for(world, LAPSEWATCH_SOURCES="rdap,dns"), engine, now=due)
    assert (again.checked, again.errors) == (len(BUGGY), 0)
    rows = domains(engine)
    for name in BUGGY:
        assert rows[name].last_verdict == "registered", name
        assert rows[name].consecutive_failures == 0, name
