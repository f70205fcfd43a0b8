"""Every verdict through the real HTTP and DNS code paths, against the local world."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from lapsewatch.config import Settings
from lapsewatch.lookup import DomainReport, check
from lapsewatch.sources import Outcome
from lapsewatch.verdict import Verdict
from lapsewatch.world import World, demo_scenario, parse_scenario

NOW = datetime.now(UTC)
LONG_AGO = NOW - timedelta(days=400)

EXTRA = """
[world]
rdap_missing_tlds = ["nordap"]

[[domains]]
name = "gone.nordap"
state = "available"

[[domains]]
name = "v2.test"
state = "for_sale"
fastly = "v2"

[[domains]]
name = "keyless.test"
fastly = "401"

[[domains]]
name = "dns-slow.test"
state = "available"
dns = "timeout"
rdap = "timeout"
fastly = "500"

[[domains]]
name = "dns-garbage.test"
state = "available"
dns = "garbage"
rdap = "500"
fastly = "500"

[[domains]]
name = "dns-servfail.test"
state = "available"
dns = "servfail"
rdap = "500"
fastly = "500"
"""


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    scenario = demo_scenario(now=NOW)
    for extra in parse_scenario(EXTRA, now=NOW).domains.values():
        scenario = scenario.with_domain(extra)
    with World(scenario, hang_seconds=3.0) as running:
        yield running


def settings_for(world: World, **overrides: str) -> Settings:
    env = {**world.env(), "LAPSEWATCH_TIMEOUT": "0.5", "LAPSEWATCH_ATTEMPTS": "2", **overrides}
    return Settings.from_env(env)


def run(
    world: World,
    name: str,
    verified_at: datetime | None = LONG_AGO,
    env: dict[str, str] | None = None,
) -> DomainReport:
    return asyncio.run(check(name, settings_for(world, **(env or {})), verified_at=verified_at))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alive.test", Verdict.REGISTERED),
        ("lapsing.test", Verdict.EXPIRING),
        ("redeeming.test", Verdict.REDEMPTION),
        ("deleting.test", Verdict.PENDING_DELETE),
        ("vacant.test", Verdict.AVAILABLE),
        ("parked.test", Verdict.FOR_SALE),
        ("caught.test", Verdict.REREGISTERED),
        ("camel.test", Verdict.EXPIRING),
        ("fraction.test", Verdict.REGISTERED),
        ("offset.test", Verdict.REGISTERED),
        ("nozone.test", Verdict.REGISTERED),
        ("example.zz", Verdict.REGISTERED),
        ("rdap-missing.test", Verdict.AVAILABLE),
        ("rdap-limited.test", Verdict.UNKNOWN),
        ("rdap-broken.test", Verdict.UNKNOWN),
        ("rdap-slow.test", Verdict.UNKNOWN),
        ("rdap-garbled.test", Verdict.UNKNOWN),
        ("rdap-listy.test", Verdict.UNKNOWN),
        ("hidden.nordap", Verdict.UNKNOWN),
        ("gone.nordap", Verdict.AVAILABLE),
        ("v2.test", Verdict.FOR_SALE),
        ("keyless.test", Verdict.REGISTERED),
        ("dns-slow.test", Verdict.UNKNOWN),
        ("dns-garbage.test", Verdict.UNKNOWN),
        ("dns-servfail.test", Verdict.UNKNOWN),
        ("never-heard-of.test", Verdict.AVAILABLE),
    ],
)
def test_verdict_for_each_scenario(world: World, name: str, expected: Verdict) -> None:
    report = run(world, f"Maintainer <m@mail.{name}>")
    assert report.parsed.domain == name
    assert report.decision.verdict is expected, report.decision.reason


def test_reregistration_needs_the_verification_date(world: World) -> None:
    assert run(world, "caught.test", verified_at=None).decision.verdict is Verdict.REGISTERED
    recent = NOW - timedelta(days=5)
    assert run(world, "caught.test", verified_at=recent).decision.verdict is Verdict.REGISTERED


def test_dangerous_verdicts_without_fastly(world: World) -> None:
    """RDAP and DNS alone see every state but the aftermarket listing Fastly knows of."""
    only = {"LAPSEWATCH_SOURCES": "rdap,dns"}
    expected = {
        "lapsing.test": Verdict.EXPIRING,
        "redeeming.test": Verdict.REDEMPTION,
        "deleting.test": Verdict.PENDING_DELETE,
        "vacant.test": Verdict.AVAILABLE,
        "parked.test": Verdict.FOR_SALE,  # parking name servers
        "caught.test": Verdict.REREGISTERED,
    }
    for name, verdict in expected.items():
        assert run(world, name, env=only).decision.verdict is verdict, name


def test_fastly_alone(world: World) -> None:
    only = {"LAPSEWATCH_SOURCES": "fastly"}
    assert run(world, "vacant.test", env=only).decision.verdict is Verdict.AVAILABLE
    assert run(world, "parked.test", env=only).decision.verdict is Verdict.FOR_SALE
    assert run(world, "alive.test", env=only).decision.verdict is Verdict.UNKNOWN


def test_status_spellings_are_normalised(world: World) -> None:
    words = run(world, "lapsing.test").observations[0]
    camel = run(world, "camel.test").observations[0]
    assert words.source == camel.source == "rdap"
    assert set(words.status) == set(camel.status) == {"client hold", "auto renew period"}


@pytest.mark.parametrize("name", ["fraction.test", "offset.test", "nozone.test", "alive.test"])
def test_date_forms_are_parsed(world: World, name: str) -> None:
    rdap = run(world, name).observations[0]
    scenario = world.scenario.domain(name)
    assert scenario is not None
    assert scenario.registered is not None
    assert scenario.expires is not None
    assert rdap.registered_at is not None
    assert rdap.expires_at is not None
    assert abs(rdap.registered_at - scenario.registered) < timedelta(seconds=1)
    assert abs(rdap.expires_at - scenario.expires) < timedelta(seconds=1)


def test_no_expiration_event(world: World) -> None:
    report = run(world, "example.zz")
    assert report.observations[0].expires_at is None
    assert "no expiration date" in report.decision.reason


def test_errors_are_reported_not_raised(world: World) -> None:
    reasons = {
        "rdap-limited.test": "HTTP 429",
        "rdap-broken.test": "HTTP 500",
        "rdap-slow.test": "no answer within",
        "rdap-garbled.test": "invalid JSON",
        "rdap-listy.test": "not an RDAP object",
        "hidden.nordap": "no RDAP server for .nordap",
    }
    for name, text in reasons.items():
        rdap = run(world, name).observations[0]
        assert rdap.outcome in (Outcome.ERROR, Outcome.SKIPPED)
        assert text in rdap.detail, (name, rdap.detail)


def test_retries_are_bounded(world: World) -> None:
    world.rdap_requests.reset()
    run(world, "rdap-broken.test")
    assert world.rdap_requests["rdap-broken.test"] == 2  # LAPSEWATCH_ATTEMPTS=2


def test_429_honours_retry_after(world: World) -> None:
    world.rdap_requests.reset()
    report = run(world, "rdap-limited.test")
    assert world.rdap_requests["rdap-limited.test"] == 2
    assert report.observations[0].retry_after == 1.0


def test_bootstrap_file_path_works_too(world: World) -> None:
    path = {"LAPSEWATCH_RDAP_BOOTSTRAP_URL": str(world.bootstrap_path)}
    assert run(world, "redeeming.test", env=path).decision.verdict is Verdict.REDEMPTION


def test_broken_bootstrap_gives_unknown_not_a_crash(world: World, tmp_path: object) -> None:
    missing = {"LAPSEWATCH_RDAP_BOOTSTRAP_URL": "/nonexistent/dns.json"}
    report = run(world, "alive.test", env=missing)
    assert report.decision.verdict is Verdict.UNKNOWN
    assert "no bootstrap" in report.observations[0].detail


def test_evidence_is_kept(world: World) -> None:
    report = run(world, "redeeming.test")
    by_source = {o.source: o for o in report.observations}
    assert "redemption" in by_source["rdap"].evidence.lower()
    assert "NXDOMAIN" in by_source["dns"].evidence
    assert "deleting" in by_source["fastly"].evidence


def test_free_provider_is_not_checked(world: World) -> None:
    world.rdap_requests.reset()
    report = run(world, "Someone <someone@GMAIL.com>")
    assert report.parsed.free_provider
    assert report.observations == ()
    assert world.rdap_requests.total == 0


def test_a_domain_that_changes_state_is_seen(world: World) -> None:
    """The drop-catch story on the wire: healthy, then gone, then caught by someone else."""
    from lapsewatch.world import DomainScenario

    name = "story.test"
    world.set_domain(DomainScenario.make(name, "registered", now=NOW))
    assert run(world, name).decision.verdict is Verdict.REGISTERED
    world.set_domain(DomainScenario.make(name, "pending_delete", now=NOW))
    assert run(world, name).decision.verdict is Verdict.PENDING_DELETE
    world.set_domain(DomainScenario.make(name, "reregistered", now=NOW))
    assert run(world, name).decision.verdict is Verdict.REREGISTERED
    world.remove_domain(name)
