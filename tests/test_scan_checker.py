"""Domain checks in a scan: once per domain, cached, and quick when nothing answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lapsewatch.config import Settings
from lapsewatch.scan import checker
from lapsewatch.scan.cache import DiskCache
from lapsewatch.sources import Observation, Outcome, Source
from lapsewatch.world import World, demo_scenario

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=2.0) as running:
        yield running


def settings_for(world: World) -> Settings:
    return Settings.from_env({**world.env(), "LAPSEWATCH_TIMEOUT": "1", "LAPSEWATCH_ATTEMPTS": "2"})


class Failing(Source):
    name = "rdap"

    def __init__(self, outcome: Outcome = Outcome.ERROR, delay: float = 0.05) -> None:
        self.calls = 0
        self.outcome = outcome
        self.delay = delay

    async def observe(self, domain: str) -> Observation:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return Observation(self.name, domain, self.outcome, "connection refused")


def test_breaker_stops_asking_a_dead_source() -> None:
    inner = Failing()
    breaker = checker._Breaker(inner, concurrency=20)

    async def run() -> list[Observation]:
        return list(await asyncio.gather(*(breaker.observe(f"d{i}.test") for i in range(30))))

    observations = asyncio.run(run())
    assert inner.calls == checker.BREAKER_THRESHOLD
    assert all(o.outcome is Outcome.ERROR for o in observations)
    assert sum("not asked" in o.detail for o in observations) == 30 - checker.BREAKER_THRESHOLD


def test_breaker_lets_everything_through_once_a_source_answers() -> None:
    inner = Failing(Outcome.ANSWERED)
    breaker = checker._Breaker(inner, concurrency=20)

    async def run() -> None:
        await asyncio.gather(*(breaker.observe(f"d{i}.test") for i in range(30)))

    asyncio.run(run())
    assert inner.calls == 30


def test_skipped_domains_do_not_open_the_breaker() -> None:
    inner = Failing(Outcome.SKIPPED, delay=0.0)
    breaker = checker._Breaker(inner, concurrency=5)

    async def run() -> None:
        await asyncio.gather(*(breaker.observe(f"d{i}.nordap") for i in range(10)))

    asyncio.run(run())
    assert inner.calls == 10


def test_observations_survive_the_cache(world: World, tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 3600)
    first = asyncio.run(
        checker.check_scan_domains(["caught.test"], settings_for(world), cache=cache)
    )
    assert first.asked == 1
    world.rdap_requests.reset()
    second = asyncio.run(
        checker.check_scan_domains(["caught.test"], settings_for(world), cache=cache)
    )
    assert (second.asked, second.cached) == (0, 1)
    assert world.rdap_requests.total == 0
    fresh, cached = first.observations["caught.test"], second.observations["caught.test"]
    assert [(o.source, o.outcome, o.registered_at, o.status) for o in cached] == [
        (o.source, o.outcome, o.registered_at, o.status) for o in fresh
    ]


def test_a_domain_nobody_answered_for_is_not_cached(
    tmp_path: Path, closed_port: Callable[[], int]
) -> None:
    port = closed_port()
    settings = Settings.from_env(
        {
            "LAPSEWATCH_RDAP_BOOTSTRAP_URL": f"http://127.0.0.1:{port}/dns.json",
            "LAPSEWATCH_DNS_NAMESERVERS": f"127.0.0.1:{port}",
        }
    )
    cache = DiskCache(tmp_path, 3600)
    domains = [f"d{i}.test" for i in range(60)]
    started = time.monotonic()
    checks = asyncio.run(checker.check_scan_domains(domains, settings, cache=cache))
    assert time.monotonic() - started < 5  # default 5 s timeout, 3 attempts: no waiting
    assert len(checks.observations) == 60
    assert all(not o.answered for seen in checks.observations.values() for o in seen)
    assert any("RDAP bootstrap unavailable" in n for n in checks.notes)
    assert any("no DNS server answered" in n for n in checks.notes)
    assert cache.writes == 0
