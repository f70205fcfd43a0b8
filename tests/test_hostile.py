"""Issue #11: a whole cycle against a world of hostile sources.

Redirect loops, bad gzip, gzip bombs, a 60 MB answer, a trickle, a 200/404
flip-flop, a record naming no domain, an error object with HTTP 200 and a lying
resolver: the cycle ends, applies every other domain, unverifies the plainly
lapsed ones and nobody on the hostile ones, within about twice the domain
deadline past the healthy work (measured in the same test, on the same world);
a second run works too. The checker runs as a subprocess so that its peak
memory is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from lapsewatch.cycle.apply import CONFIRMATION_PENDING, CONFIRMATION_RESOLVED
from lapsewatch.store import Account, Domain, Email, Event, make_engine, make_sessionmaker, upgrade
from lapsewatch.world import DomainScenario, Scenario, World, http_base

LONG_AGO = datetime(2019, 5, 1, tzinfo=UTC)
HEALTHY = [f"fine{i}.test" for i in range(8)]
LAPSED = {"gone.test": "available", "redeem.test": "redemption"}
HOSTILE_RDAP = {
    "loop.test": "redirect_loop",
    "away.test": "redirect_away",
    "badgz.test": "bad_gzip",
    "bomb.test": "gzip_bomb",
    "bomb2.test": "gzip_bomb",
    "huge.test": "huge",
    "trickle.test": "trickle",
    "flip.test": "flip",
    "noldh.test": "no_ldh",
    "err200.test": "error_200",
}
HOSTILE_FASTLY = {
    "fastly-loop.test": "redirect_loop",
    "fastly-badgz.test": "bad_gzip",
    "fastly-bomb.test": "gzip_bomb",
    "fastly-huge.test": "huge",
}
LIAR = "liar.test"  # the resolver says NXDOMAIN (with the real SOA) while RDAP is down
HOSTILE = {*HOSTILE_RDAP, *HOSTILE_FASTLY, LIAR}
DOMAIN_DEADLINE = 3.0
MEMORY_LIMIT = 300 * 1024 * 1024
LOAD_MARGIN = 3.0
"""Seconds on top of the bound for a loaded 2-core machine (CI): the hostile domains
cost more CPU than the healthy ones (a bomb inflated up to the cap, 4 MB read of the
huge answer), which a busy machine stretches. Measured: 2.5 to 3.6 s past the healthy
work at a load of 4, against the 6 s of twice the domain deadline."""


def hostile_scenario() -> Scenario:
    domains = [DomainScenario.make(name, registered="2010-06-01") for name in HEALTHY]
    domains.append(DomainScenario.make("gone.test", "available"))
    domains.append(DomainScenario.make("redeem.test", "redemption", registered="2010-06-01"))
    domains += [
        DomainScenario.make(name, registered="2010-06-01", rdap=fault)
        for name, fault in HOSTILE_RDAP.items()
    ]
    domains += [
        DomainScenario.make(name, registered="2010-06-01", fastly=fault)
        for name, fault in HOSTILE_FASTLY.items()
    ]
    domains.append(DomainScenario.make(LIAR, registered="2010-06-01", dns="lie", rdap="500"))
    scenario = Scenario({}, ("test",))
    for domain in domains:
        scenario = scenario.with_domain(domain)
    return scenario


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # A byte every 0.1 s: each read gets data well within the 0.5 s read timeout,
    # so only the request's total deadline can end it.
    with World(hostile_scenario(), hang_seconds=5.0, trickle_seconds=0.1) as running:
        yield running


def seed(engine: Engine, names: Iterable[str] = (*HEALTHY, *LAPSED, *sorted(HOSTILE))) -> None:
    with make_sessionmaker(engine).begin() as session:
        for index, name in enumerate(names):
            account = Account(username=f"user{index}", created_at=LONG_AGO, projects=[])
            for who in ("a", "b"):
                account.emails.append(
                    Email(
                        address=f"{who}{index}@{name}",
                        domain=name,
                        free_provider=False,
                        primary=who == "a",
                        verified=True,
                        verified_at=LONG_AGO,
                    )
                )
            session.add(account)
        session.add_all(Domain(name=name, consecutive_failures=0) for name in names)


@dataclass(frozen=True)
class Run:
    code: int
    summary: dict[str, Any]
    peak: int
    """Peak RSS, bytes."""
    ended_at: datetime


def run_check(world: World, url: str, tmp_path: Path, *args: str) -> Run:
    """``lapsewatch check`` in a subprocess: exit code, JSON summary, peak RSS, end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEWATCH_")}
    env.update(world.env())
    env.update(
        {
            "LAPSEWATCH_DATABASE_URL": url,
            "LAPSEWATCH_TIMEOUT": "0.5",
            "LAPSEWATCH_ATTEMPTS": "2",
            "LAPSEWATCH_MAX_RETRY_AFTER": "1",
            "LAPSEWATCH_DOMAIN_DEADLINE": str(DOMAIN_DEADLINE),
            "LAPSEWATCH_CONCURRENCY": "5",
            # One limit per source, as before per-server pacing: every hostile domain
            # shares the world's one RDAP server, and the pacer would (rightly) stop
            # retrying all of them after the trickle's timeout; this test is about
            # what each hostile answer does, one by one (pacing: tests/test_pace*.py).
            "LAPSEWATCH_PACE": "source",
        }
    )
    out, err = tmp_path / "out.json", tmp_path / "err.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "lapsewatch", "check", "--format", "json", *args],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        peak = 0
        try:
            while process.poll() is None:
                peak = max(peak, _high_water(process.pid))
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.kill()
    ended_at = datetime.now(UTC)
    assert "Traceback" not in err.read_text(errors="replace"), err.read_text()[-3000:]
    summary = json.loads(out.read_text())
    assert peak > 0, "the checker's peak RSS could not be read"
    return Run(process.returncode, summary, peak, ended_at)


def cycle_seconds(engine: Engine, run: Run) -> float:
    """Seconds from the run's first check to the end of its process: its work without
    Python's start-up, which takes seconds of its own on a loaded machine."""
    with make_sessionmaker(engine)() as session:
        first: datetime | None = session.scalar(select(func.min(Domain.last_checked_at)))
    assert first is not None
    first = first if first.tzinfo else first.replace(tzinfo=UTC)
    return (run.ended_at - first).total_seconds()


def _high_water(pid: int) -> int:
    """The process's peak RSS since its exec (VmHWM), in bytes; 0 once it is gone.

    Not ``ru_maxrss`` from ``wait4``: that one keeps the high-water mark of the
    forked copy of pytest from before the exec, which grows with the suite."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def emails(engine: Engine) -> dict[str, bool]:
    with make_sessionmaker(engine)() as session:
        return {e.address: e.verified for e in session.scalars(select(Email))}


def verdicts(engine: Engine) -> dict[str, str | None]:
    with make_sessionmaker(engine)() as session:
        return {d.name: d.last_verdict for d in session.scalars(select(Domain))}


def test_the_world_packs_its_gzip_bomb_before_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Packing the bomb takes seconds of CPU: done on the first request, it made that
    request time out on a loaded machine (the client's timeout, not its size cap)."""
    monkeypatch.setattr(http_base, "_bomb", None)
    bomb = DomainScenario.make("bomb.test", registered="2010-06-01", fastly="gzip_bomb")
    with World(Scenario({}, ("test",)).with_domain(bomb)):
        assert http_base._bomb is not None  # before any request
    monkeypatch.setattr(http_base, "_bomb", None)
    with World(Scenario({}, ("test",))) as world:
        assert http_base._bomb is None  # not without a bomb in the scenario
        world.set_domain(DomainScenario.make("bomb2.test", rdap="gzip_bomb"))
        assert http_base._bomb is not None


def test_hostile_sources_neither_stop_the_cycle_nor_unverify_anyone(
    world: World, tmp_path: Path
) -> None:
    # The healthy work alone first: the same world, without the hostile domains.
    (tmp_path / "healthy").mkdir()
    healthy_engine = make_engine(f"sqlite:///{tmp_path / 'healthy' / 'healthy.db'}")
    upgrade(healthy_engine)
    seed(healthy_engine, [*HEALTHY, *LAPSED])
    healthy_run = run_check(world, str(healthy_engine.url), tmp_path / "healthy")
    assert healthy_run.summary["checked"] == len(HEALTHY) + len(LAPSED)
    healthy = cycle_seconds(healthy_engine, healthy_run)
    healthy_engine.dispose()

    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    engine = make_engine(url)
    upgrade(engine)
    seed(engine)

    run = run_check(world, url, tmp_path)
    code, summary, peak = run.code, run.summary, run.peak
    assert code == 1  # it unverified the lapsed ones
    assert peak < MEMORY_LIMIT, f"checker peaked at {peak / 2**20:.0f} MB"
    # Each hostile domain holds a slot for at most its deadline; with 10 slots for 15
    # hostile domains, that is about two deadlines past the healthy work.
    took = cycle_seconds(engine, run)
    bound = healthy + 2 * DOMAIN_DEADLINE + LOAD_MARGIN
    assert took < bound, f"{took:.1f} s, healthy work {healthy:.1f} s, bound {bound:.1f} s"
    total = len(HEALTHY) + len(LAPSED) + len(HOSTILE)
    assert summary["checked"] == total  # every domain applied, none lost
    seen = verdicts(engine)
    assert all(seen[name] == "registered" for name in HEALTHY), seen
    assert {name: seen[name] for name in LAPSED} == LAPSED
    assert all(seen[name] == "registered" for name in HOSTILE_FASTLY), seen  # RDAP says so
    for name in (*HOSTILE_RDAP, LIAR):
        assert seen[name] == "unknown", (name, seen[name])
    assert summary["errors"] + summary["pending_confirmation"] == len(HOSTILE_RDAP) + 1
    assert summary["pending_confirmation"] == 2  # flip.test's 404, the liar's NXDOMAIN

    verified = emails(engine)
    for address, ok in verified.items():
        domain = address.split("@")[1]
        assert ok is (domain not in LAPSED), address
    assert summary["unverified"] == 2 * len(LAPSED)

    with make_sessionmaker(engine)() as session:
        pending = {
            e.domain
            for e in session.scalars(select(Event).where(Event.kind == CONFIRMATION_PENDING))
        }
        assert pending == {"flip.test", LIAR}
        reasons = {d.name: d.last_reason or "" for d in session.scalars(select(Domain))}
    assert "redirect" in reasons["loop.test"]
    assert "another host" in reasons["away.test"]
    assert "gzip" in reasons["badgz.test"]
    assert "bytes" in reasons["bomb.test"]
    assert "bytes" in reasons["huge.test"]
    assert "no answer within" in reasons["trickle.test"]
    assert "names no domain" in reasons["noldh.test"]
    assert "error object" in reasons["err200.test"]

    # A second run, everything again: the hostile domains are retried, the run ends
    # again, and the flip-flop (now 200) ends unknown, its pending danger contradicted.
    second = run_check(world, url, tmp_path, "--all")
    again = second.summary
    assert second.code == 0, again
    assert second.peak < MEMORY_LIMIT
    assert again["checked"] == total - len(LAPSED)  # no verified address left there
    assert again["unverified"] == 0
    assert emails(engine) == verified
    with make_sessionmaker(engine)() as session:
        resolved = session.scalars(
            select(Event).where(Event.kind == CONFIRMATION_RESOLVED, Event.domain == "flip.test")
        ).all()
    assert [e.after["outcome"] for e in resolved if e.after] == ["contradicted"]
    assert verdicts(engine)["flip.test"] == "unknown"
    engine.dispose()
