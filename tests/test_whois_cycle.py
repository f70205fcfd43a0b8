"""WHOIS wired in (issue #12): TLDs without RDAP get the registry's WHOIS record,
through the real cycle against the world's WHOIS server; doubt stays ``unknown``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from lapsewatch.config import Settings
from lapsewatch.cycle import run_cycle
from lapsewatch.domains import parse
from lapsewatch.sources import WhoisSource, build_sources
from lapsewatch.store import Account, Domain, Email, make_sessionmaker
from lapsewatch.world import Scenario, World, parse_scenario
from lapsewatch.world.whois_server import LoopbackWhoisServer, WhoisEntry
from tests.cycle_support import settings_for

NOW = datetime.now(UTC).replace(microsecond=0)
LONG_AGO = datetime(2019, 5, 1, tzinfo=UTC)

SCENARIO = """
[world]
rdap_missing_tlds = ["wz", "nordap"]
whois_missing_tlds = ["nordap"]

[[domains]]
name = "alive.test"             # RDAP covers .test: WHOIS is never asked
registered = "2010-06-01"

[[domains]]
name = "steady.wz"
registered = "2011-03-01"

[[domains]]
name = "caught.wz"              # dropped and registered again 20 days ago
state = "reregistered"

[[domains]]
name = "lapsing.wz"             # expired 3 days ago, on hold in auto-renew grace
registered = "2011-03-01"
state = "expiring"

[[domains]]
name = "redeem.wz"
registered = "2011-03-01"
state = "redemption"

[[domains]]
name = "gone.wz"                # the registry's not-found wording, and NXDOMAIN
state = "available"

[[domains]]
name = "written.wz"             # WHOIS text given by the scenario
registered = "2011-03-01"
whois = '''
   Domain Name: WRITTEN.WZ
   Creation Date: 2012-01-02T03:04:05Z
   Registry Expiry Date: 2020-01-02T03:04:05Z
   Domain Status: ok https://icann.org/epp#ok
   Name Server: NS1.WRITTEN.WZ
'''

[[domains]]
name = "limited.wz"
registered = "2011-03-01"
whois_fault = "rate_limit"

[[domains]]
name = "slow.wz"
registered = "2011-03-01"
whois_fault = "hang"

[[domains]]
name = "noisy.wz"
registered = "2011-03-01"
whois_fault = "garbage"

[[domains]]
name = "mute.wz"
registered = "2011-03-01"
whois_fault = "empty"

[[domains]]
name = "hidden.nordap"          # neither RDAP nor WHOIS
registered = "2011-03-01"
"""

EXPECTED = {
    "alive.test": "registered",
    "steady.wz": "registered",
    "caught.wz": "reregistered",
    "lapsing.wz": "expiring",
    "redeem.wz": "redemption",
    "gone.wz": "available",
    "written.wz": "expiring",  # its given expiry date is past
    "limited.wz": "unknown",
    "slow.wz": "unknown",
    "noisy.wz": "unknown",
    "mute.wz": "unknown",
    "hidden.nordap": "unknown",
}


def scenario() -> Scenario:
    return parse_scenario(SCENARIO, now=NOW, source="whois-cycle")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(scenario(), hang_seconds=5.0) as running:
        yield running


def seed(engine: Engine, names: list[str]) -> None:
    with make_sessionmaker(engine).begin() as session:
        for name in names:
            account = Account(username=name.replace(".", "-"), created_at=LONG_AGO, projects=[])
            address = f"owner@{name}"
            account.emails.append(
                Email(
                    address=address,
                    domain=parse(address).domain,
                    free_provider=False,
                    primary=True,
                    verified=True,
                    verified_at=LONG_AGO,
                )
            )
            session.add(account)
        session.add_all(Domain(name=n, consecutive_failures=0) for n in names)


def test_default_sources_include_whois() -> None:
    assert Settings.from_env({}).sources == ("rdap", "dns", "whois")
    assert Settings.from_env({"LAPSEWATCH_FASTLY_KEY": "k"}).sources == (
        "rdap",
        "dns",
        "whois",
        "fastly",
    )
    assert Settings.from_env({"LAPSEWATCH_SOURCES": "whois"}).sources == ("whois",)


def test_cycle_reads_the_registrys_whois(world: World, engine: Engine) -> None:
    seed(engine, sorted(EXPECTED))
    world.whois_requests.reset()
    # 2 s, not settings_for's 0.5 s: a busy CI machine's answer must not look like a hang.
    summary = run_cycle(settings_for(world, LAPSEWATCH_TIMEOUT="2"), engine, now=NOW)
    with make_sessionmaker(engine)() as session:
        domains = list(session.scalars(select(Domain)))
        verdicts = {d.name: d.last_verdict for d in domains}
        reasons = {d.name: d.last_reason for d in domains if verdicts[d.name] != EXPECTED[d.name]}
        assert verdicts == EXPECTED, reasons
        emails = {e.domain: e for e in session.scalars(select(Email))}
        for name, verdict in EXPECTED.items():
            dangerous = verdict not in ("registered", "unknown")
            assert emails[name].verified is not dangerous, name
            if dangerous:
                assert emails[name].unverify_reason == verdict
                assert "WHOIS" in (emails[name].unverify_detail or "") or name == "gone.wz"
        steady = session.get(Domain, "steady.wz")
        assert steady is not None
        assert steady.registered_at is not None  # the WHOIS record moves the known dates
        assert steady.expires_at is not None
    assert summary.unverified == 5
    # WHOIS only for the TLD without RDAP, once per domain; never for .test or .nordap.
    asked = world.whois_requests.as_dict()
    assert set(asked) == {n for n in EXPECTED if n.endswith(".wz")}
    assert all(count == 1 for name, count in asked.items() if name != "slow.wz")


def test_whois_doubt_never_unverifies(
    world: World, engine: Engine, tmp_path: Path, closed_port: Callable[[], int]
) -> None:
    """Refused connections, timeouts, rate-limit texts, garbage: ``unknown``, kept verified."""
    closed = closed_port()
    table = tmp_path / "whois.json"
    table.write_text(json.dumps({"wz": {"server": f"127.0.0.1:{closed}", "like": "com"}}))
    seed(engine, ["steady.wz", "gone.wz", "redeem.wz"])
    settings = settings_for(
        world, LAPSEWATCH_WHOIS_SERVERS=str(table), LAPSEWATCH_SOURCES="rdap,dns,whois"
    )
    summary = run_cycle(settings, engine, now=NOW)
    with make_sessionmaker(engine)() as session:
        emails = list(session.scalars(select(Email)))
        assert all(e.verified for e in emails)
        verdicts = {d.name: d.last_verdict for d in session.scalars(select(Domain))}
    assert verdicts["steady.wz"] == "unknown"
    assert verdicts["redeem.wz"] == "unknown"  # only the DNS's NXDOMAIN: thin, pending
    assert verdicts["gone.wz"] == "unknown"
    assert summary.unverified == 0


def test_sources_are_built_with_whois_after_rdap() -> None:
    settings = Settings.from_env({})
    import httpx

    sources = build_sources(settings, httpx.AsyncClient())
    assert [s.name for s in sources] == ["rdap", "dns", "whois"]
    whois = sources[2]
    assert isinstance(whois, WhoisSource)
    assert whois.rdap is sources[0]


def test_whois_servers_update_against_a_loopback_iana(tmp_path: Path) -> None:
    answers = {
        "wz": WhoisEntry(text="domain:       WZ\n\nwhois:        whois.nic.wz\n"),
        "ru": WhoisEntry(text="domain:       RU\n\nwhois:        whois.tcinet.ru\n"),
        "xx": WhoisEntry(text="Query rate limit exceeded\n"),
    }
    current = tmp_path / "current.json"
    current.write_text(json.dumps({"xx": "whois.old.xx", "ru": "whois.old.ru"}))
    out = tmp_path / "refreshed.json"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEWATCH_")}
    environ["LAPSEWATCH_WHOIS_SERVERS"] = str(current)
    with LoopbackWhoisServer(answers) as iana:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "lapsewatch",
                "whois-servers",
                "update",
                "--server",
                iana.address,
                "--tlds",
                "wz,ru,xx",
                "--output",
                str(out),
                "--timeout",
                "2",
            ],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        queries = sorted(iana.queries)
    assert result.returncode == 0, result.stdout + result.stderr
    assert queries == ["ru", "wz", "xx"]
    assert json.loads(out.read_text()) == {
        "ru": "whois.tcinet.ru",
        "wz": "whois.nic.wz",
        "xx": "whois.old.xx",  # a failed answer keeps the old entry
    }
