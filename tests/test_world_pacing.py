"""The world's latency and rate limit, used by the benchmark."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from lapsewatch.sources import DnsSource
from lapsewatch.world import World, demo_scenario
from lapsewatch.world.pacing import PATCHWORK, Pacing, Patchwork, Registry, tld_weights


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


def test_the_patchwork_world_is_shaped_like_the_real_one() -> None:
    assert len(PATCHWORK) >= 12
    assert sum(share for _, share in tld_weights()) == pytest.approx(1.0)
    quotas = [r.quota for r in PATCHWORK]
    latencies = [r.latency for r in PATCHWORK]
    assert min(quotas) <= 5
    assert max(quotas) >= 300
    assert min(latencies) <= 0.02
    assert max(latencies) >= 0.4
    big = PATCHWORK[0]
    assert {t for t, _ in big.tlds} == {"com", "net"}
    assert sum(s for _, s in big.tlds) == pytest.approx(0.5)


def test_each_patchwork_registry_has_its_own_server_and_quota(tmp_path: Path) -> None:
    registries = (
        Registry("one", (("test", 0.5),), quota=3, latency=0.0),
        Registry("two", (("example", 0.5),), quota=1000, latency=0.0),
    )
    patchwork = Patchwork(demo_scenario(), tmp_path, registries)
    patchwork.start()
    try:
        services = json.loads(patchwork.bootstrap_path.read_text())["services"]
        urls = {tlds[0]: urls[0] for tlds, urls in services}
        assert urls["test"].split("/rdap/")[0] != urls["example"].split("/rdap/")[0]
        with httpx.Client() as client:
            codes = [client.get(f"{urls['test']}domain/alive.test").status_code for _ in range(10)]
        assert 429 in codes  # "one" admits 3 a second
        stats = patchwork.stats()
        assert stats["one"]["refused"] == codes.count(429)
        assert stats["two"]["admitted"] == 0
    finally:
        patchwork.stop()


def test_a_patchwork_whois_registry_answers_its_rate_limit_text(tmp_path: Path) -> None:
    """A WHOIS-only registry: not in the RDAP bootstrap, in the WHOIS table, and above its
    quota it answers as a busy registry does, which the WHOIS source reads as an error."""
    from lapsewatch.sources import WhoisSource
    from lapsewatch.sources.interface import Outcome
    from lapsewatch.sources.whois_servers import load_whois_servers

    registries = (
        Registry("rdap-one", (("example", 0.5),), quota=1000, latency=0.0),
        Registry("whois-one", (("test", 0.5),), quota=3, latency=0.0, protocol="whois"),
    )
    patchwork = Patchwork(demo_scenario(), tmp_path, registries)
    patchwork.start()
    try:
        services = json.loads(patchwork.bootstrap_path.read_text())["services"]
        assert [tlds for tlds, _ in services] == [["example"]]
        source = WhoisSource(servers=load_whois_servers(str(patchwork.whois_servers_path)))

        async def many() -> list[str]:
            observations = [await source.observe("alive.test") for _ in range(8)]
            return [o.outcome.value + ": " + o.detail for o in observations]

        details = asyncio.run(many())
        answered = [d for d in details if d.startswith(Outcome.ANSWERED.value)]
        limited = [d for d in details if "rate limit" in d]
        assert len(answered) == 3, details  # its quota, then its rate-limit text
        assert len(limited) == 5, details
        stats = patchwork.stats()["whois-one"]
        assert (stats["protocol"], stats["admitted"], stats["refused"]) == ("whois", 3, 5)
        assert patchwork.env()["LAPSEWATCH_WHOIS_SERVERS"] == str(patchwork.whois_servers_path)
    finally:
        patchwork.stop()
