"""The world's latency and rate limit, used by the benchmark."""

from __future__ import annotations

import asyncio
import time

import httpx

from lapsewatch.sources import DnsSource
from lapsewatch.world import World, demo_scenario
from lapsewatch.world.pacing import Pacing


def test_token_bucket_admits_the_rate_and_refuses_above() -> None:
    pacing = Pacing(rate=10)
    admitted = sum(pacing.admit() for _ in range(30))
    assert admitted == 10
    assert pacing.refused == 20
    time.sleep(0.25)
    assert pacing.admit()


def test_http_answers_429_above_the_rate() -> None:
    with World(demo_scenario(), rate_limit=5) as world:
        url = f"{world.rdap_url}/rdap/test/domain/alive.test"

        async def burst() -> list[int]:
            async with httpx.AsyncClient() as client:
                responses = await asyncio.gather(*(client.get(url) for _ in range(20)))
            return [r.status_code for r in responses]

        codes = asyncio.run(burst())
        assert 5 <= codes.count(200) <= 7  # the bucket, plus what refills during the burst
        assert codes.count(429) == 20 - codes.count(200)
        stats = world.pacing_stats()["rdap"]
        assert stats["refused"] == codes.count(429)


def test_http_latency_is_added() -> None:
    with World(demo_scenario(), latency=0.2) as world, httpx.Client() as client:
        started = time.monotonic()
        assert client.get(f"{world.rdap_url}/rdap/test/domain/alive.test").status_code == 200
        assert time.monotonic() - started >= 0.2


def test_dns_latency_does_not_serialise_answers() -> None:
    with World(demo_scenario(), latency=0.2) as world:
        source = DnsSource(((world.dns_host, world.dns_port),), timeout=2.0, attempts=1)

        async def many() -> list[bool | None]:
            observations = await asyncio.gather(*(source.observe("alive.test") for _ in range(20)))
            return [o.found for o in observations]

        started = time.monotonic()
        found = asyncio.run(many())
        assert found == [True] * 20
        assert time.monotonic() - started < 2.0  # 20 x 0.2 s in parallel, not in a row
