"""The cycle at scale: streamed due domains, batched writes, exact rate limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from lapsewatch.cycle import run as cycle_run
from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.apply import (
    HEALTHY_EVIDENCE_LIMIT,
    CheckResult,
    apply_result,
    apply_results,
    stored_evidence,
)
from lapsewatch.cycle.checker import open_checker
from lapsewatch.cycle.due import DueDomain, count_due, due_pages, select_due, stream_due
from lapsewatch.pace.limited import Limited
from lapsewatch.schedule import Policy
from lapsewatch.sources import DnsSource, Observation, Outcome, RdapSource
from lapsewatch.store import Domain, Email, ObservationRow, make_engine, make_sessionmaker, upgrade
from lapsewatch.verdict import Verdict
from lapsewatch.world import World, demo_scenario
from tests.cycle_support import NOW, seed, settings_for, state


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


def listed(session: Session, *, everything: bool = False) -> list[DueDomain]:
    return select_due(session, now=NOW, limit=None, everything=everything)


# -- streaming the due domains ------------------------------------------------------------------


def test_pages_give_the_batch_query_s_order(engine: Engine) -> None:
    seed(engine)
    with make_sessionmaker(engine).begin() as session:
        # Some checked, due at different times; one not due; one without a domains row.
        for index, name in enumerate(["alive.test", "camel.test", "parked.test"]):
            domain = session.get(Domain, name)
            assert domain is not None
            domain.next_due_at = NOW - timedelta(days=3 - index)
        later = session.get(Domain, "lapsing.test")
        assert later is not None
        later.next_due_at = NOW + timedelta(days=1)
        orphan = session.get(Domain, "vacant.test")
        assert orphan is not None
        session.delete(orphan)
    with make_sessionmaker(engine)() as session:
        expected = listed(session)
    pages = list(due_pages(engine, now=NOW, limit=None, page=2))
    assert all(len(page) <= 2 for page in pages)
    assert [d for page in pages for d in page] == expected
    names = [d.name for d in expected]
    assert names.index("vacant.test") < names.index("alive.test")  # row missing: never checked
    assert names[-3:] == ["alive.test", "camel.test", "parked.test"]  # oldest due first
    assert "lapsing.test" not in names
    assert count_due(engine, now=NOW) == len(expected)
    assert list(stream_due(engine, now=NOW, limit=4, page=3)) == expected[:4]


def test_everything_yields_each_domain_once(engine: Engine) -> None:
    seed(engine)
    with make_sessionmaker(engine)() as session:
        expected = sorted(listed(session, everything=True), key=lambda d: d.name)
    got = list(stream_due(engine, now=NOW, limit=None, everything=True, page=2))
    assert sorted(got, key=lambda d: d.name) == expected
    assert len({d.name for d in got}) == len(got)
    assert count_due(engine, now=NOW, everything=True) == len(expected)


def test_a_domain_without_verified_addresses_is_not_due(engine: Engine) -> None:
    seed(engine)
    with make_sessionmaker(engine).begin() as session:
        for email in session.scalars(select(Email).where(Email.domain == "alive.test")):
            email.verified = False
    names = {d.name for d in stream_due(engine, now=NOW, limit=None, page=1)}
    assert "alive.test" not in names
    assert "camel.test" in names


# -- applying in batches ------------------------------------------------------------------------


def check_everything(world: World, engine: Engine) -> list[CheckResult]:
    with make_sessionmaker(engine)() as session:
        due = listed(session, everything=True)

    async def run() -> list[CheckResult]:
        async with open_checker(settings_for(world)) as checker:
            return [r async for r in checker.check_many(due, NOW)]

    return asyncio.run(run())


def rows(engine: Engine) -> dict[str, Any]:
    with make_sessionmaker(engine)() as session:
        domains = {
            d.name: (
                d.last_verdict,
                d.next_due_at,
                d.registered_at,
                d.expires_at,
                d.consecutive_failures,
                d.lease_until,
            )
            for d in session.scalars(select(Domain))
        }
        observations = sorted(
            (o.domain, o.source, o.outcome, o.detail, o.evidence)
            for o in session.scalars(select(ObservationRow))
        )
    return {**state(engine), "domains": domains, "observations": observations}


def test_a_batch_applies_like_one_result_at_a_time(
    world: World, engine: Engine, tmp_path: Path
) -> None:
    reference = make_engine(f"sqlite:///{tmp_path / 'one-by-one.db'}")
    upgrade(reference)
    seed(reference)
    seed(engine)
    results = check_everything(world, engine)
    assert any(r.decision.verdict.dangerous for r in results)
    policy = Policy()
    for result in results:
        with make_sessionmaker(reference).begin() as session:
            apply_result(session, result, policy=policy)
    with make_sessionmaker(engine).begin() as session:
        counts = apply_results(session, results, policy=policy)
    assert sum(counts) > 0
    assert rows(engine) == rows(reference)
    with make_sessionmaker(engine).begin() as session:  # idempotent
        again = apply_results(session, results, policy=policy)
    assert sum(again) == 0
    reference.dispose()


def test_a_failed_batch_is_applied_one_result_at_a_time(
    world: World, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = make_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    upgrade(reference)
    seed(reference)
    # Two runs compared verdict for verdict: a 2 s source timeout, so that a healthy
    # domain's answer is not lost on a loaded machine in one run only (CI saw that).
    settings = settings_for(world, LAPSEWATCH_TIMEOUT="2")
    run_cycle(settings, reference, now=NOW)

    def conflict(*args: object, **kwargs: object) -> list[int]:
        raise OperationalError("INSERT", {}, Exception("deadlock detected"))

    monkeypatch.setattr(cycle_run, "apply_results", conflict)
    seed(engine)
    summary = run_cycle(settings, engine, now=NOW)
    assert summary.checked == len(state(reference)["verdicts"])
    assert state(engine) == state(reference)
    reference.dispose()


def test_healthy_evidence_is_capped_dangerous_kept_whole() -> None:
    big = Observation(
        source="rdap", domain="x.test", outcome=Outcome.ANSWERED, detail="", evidence="x" * 5000
    )
    kept = stored_evidence(big, Verdict.REGISTERED)
    assert kept.startswith("x" * HEALTHY_EVIDENCE_LIMIT)
    assert "3976 more characters not kept" in kept
    assert stored_evidence(big, Verdict.REDEMPTION) == big.evidence
    assert stored_evidence(big, Verdict.UNKNOWN) == big.evidence


def test_results_reach_on_result_and_the_summary_counts_requests(
    world: World, engine: Engine
) -> None:
    seed(engine)
    seen: list[tuple[str, int]] = []
    summary = run_cycle(
        settings_for(world),
        engine,
        now=NOW,
        on_result=lambda result, unverified: seen.append((result.domain, unverified)),
    )
    assert len(seen) == summary.checked
    assert sum(n for _, n in seen) == summary.unverified
    assert set(summary.sources) == {"rdap", "dns", "fastly", "whois"}
    asked = {name: s["requests"] for name, s in summary.sources.items()}
    assert all(asked[name] >= summary.checked for name in ("rdap", "dns", "fastly"))
    assert asked["whois"] == 0  # only for TLDs without RDAP; the world's .test has it
    assert "sources" not in summary.to_dict()  # the CLI's JSON keeps its shape


# -- the rate limit sees every request, retries included ----------------------------------------


def bootstrap(tmp_path: Path) -> str:
    path = tmp_path / "dns.json"
    services = [[["test"], ["http://rdap.invalid/rdap/"]]]
    path.write_text(json.dumps({"version": "1.0", "services": services}))
    return str(path)


def test_retries_pass_the_rate_limiter(tmp_path: Path) -> None:
    answers = iter([429, 503, 429, 200])
    record = {"objectClassName": "domain", "ldhName": "ALIVE.TEST", "status": ["active"]}

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        return httpx.Response(status, json=record if status == 200 else {})

    async def run() -> tuple[Observation, Limited]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            source = RdapSource(client, bootstrap_location=bootstrap(tmp_path), attempts=4)
            limited = Limited(source, rate=1000, concurrency=1)
            return await limited.observe("alive.test"), limited

    observation, limited = asyncio.run(run())
    assert observation.outcome is Outcome.ANSWERED
    assert limited.requests == 4  # every attempt went through the limiter
    assert limited.rate_limited == 2


def test_a_source_that_does_not_pace_itself_is_counted_per_observation() -> None:
    class Plain(RdapSource):
        paces_requests = False

        async def observe(self, domain: str) -> Observation:
            return Observation.error("rdap", domain, "busy", retry_after=0.01)

    async def run() -> Limited:
        async with httpx.AsyncClient() as client:
            limited = Limited(Plain(client), rate=1000, concurrency=2)
            await asyncio.gather(*(limited.observe(f"d{i}.test") for i in range(3)))
            return limited

    limited = asyncio.run(run())
    assert (limited.requests, limited.rate_limited) == (3, 3)


def test_dns_refused_above_the_rate_counts_as_rate_limited() -> None:
    with World(demo_scenario(now=NOW), rate_limit=1) as world:
        host, port = world.dns_host, world.dns_port

        async def run() -> Limited:
            limited = Limited(
                DnsSource(((host, port),), timeout=0.5, attempts=2), rate=1000, concurrency=4
            )
            await asyncio.gather(*(limited.observe(n) for n in ("alive.test", "camel.test")))
            return limited

        limited = asyncio.run(run())
        stats = world.pacing_stats()["dns"]
    assert stats["refused"] >= 1
    assert limited.rate_limited == stats["refused"]
    assert limited.requests == stats["admitted"] + stats["refused"]
