"""The DNS source on the wire: against our builtin server and against real NSD."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from lapsewatch.config import Settings
from lapsewatch.sources import DnsSource, Observation, Outcome
from lapsewatch.world import World, demo_scenario, nsd_available
from tests.services import require_service

NOW = datetime.now(UTC)


@pytest.fixture(
    scope="module",
    params=["builtin", pytest.param("nsd", marks=pytest.mark.nsd)],
)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "nsd":
        require_service("NSD", nsd_available())
    with World(demo_scenario(now=NOW), dns=request.param, hang_seconds=1.0) as running:
        yield running


def observe(world: World, name: str) -> Observation:
    settings = Settings.from_env({**world.env(), "LAPSEWATCH_TIMEOUT": "0.5"})
    source = DnsSource(settings.dns_nameservers, timeout=settings.timeout, attempts=2)
    return asyncio.run(source.observe(name))


@pytest.mark.parametrize(
    ("name", "found", "status"),
    [
        ("alive.test", True, ("delegated",)),
        ("caught.test", True, ("delegated",)),
        ("parked.test", True, ("delegated", "parked")),
        ("lapsing.test", False, ("undelegated",)),
        ("redeeming.test", False, ("undelegated",)),
        ("deleting.test", False, ("undelegated",)),
        ("vacant.test", False, ("undelegated",)),
        ("never-registered.test", False, ("undelegated",)),
        ("hidden.nordap", True, ("delegated",)),
        ("example.zz", True, ("delegated",)),
    ],
)
def test_delegation(world: World, name: str, found: bool, status: tuple[str, ...]) -> None:
    obs = observe(world, name)
    assert obs.outcome is Outcome.ANSWERED, obs.detail
    assert obs.found is found
    assert obs.status == status
    assert obs.evidence


def test_nameservers_are_read_from_the_referral(world: World) -> None:
    obs = observe(world, "parked.test")
    assert set(obs.nameservers) == {"ns1.sedoparking.com", "ns2.sedoparking.com"}
    obs = observe(world, "alive.test")
    assert set(obs.nameservers) == {"ns1.alive.test", "ns2.alive.test"}


def test_a_tld_the_server_does_not_serve_is_an_error(world: World) -> None:
    obs = observe(world, "somewhere.invalid")
    assert obs.outcome is Outcome.ERROR
    assert "REFUSED" in obs.detail


def test_nothing_listening_is_an_error() -> None:
    source = DnsSource((("127.0.0.1", 9),), timeout=0.3, attempts=2)
    obs = asyncio.run(source.observe("alive.test"))
    assert obs.outcome is Outcome.ERROR
    assert obs.found is None
