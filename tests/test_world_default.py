"""Huge worlds described cheaply: ``[world] default_state`` and ``tlds``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from lapsewatch.world import World, demo_scenario, parse_scenario
from lapsewatch.world.dns_server import answer
from lapsewatch.world.fastly_server import STATUS_PATH
from lapsewatch.world.scenario import ScenarioError
from lapsewatch.world.zone import build_apex_zones, build_zones

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)

SCENARIO = """
[world]
default_state = "registered"
tlds = ["com", "test"]

[[domains]]
name = "gone.test"
state = "available"

[[domains]]
name = "held.com"
state = "redemption"

[[domains]]
name = "broken.com"
rdap = "500"
"""


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(parse_scenario(SCENARIO, now=NOW), hang_seconds=0.3) as running:
        yield running


def rdap(world: World, name: str) -> httpx.Response:
    tld = name.rsplit(".", 1)[1]
    return httpx.get(f"{world.rdap_url}/rdap/{tld}/domain/{name}", timeout=5)


def ns(world: World, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "NS")
    return dns.query.udp(query, world.dns_host, port=world.dns_port, timeout=2)


def test_unlisted_names_take_the_default_state() -> None:
    scenario = parse_scenario(SCENARIO, now=NOW)
    assert scenario.tlds == ("com", "test")
    made_up = scenario.domain("anything.com")
    assert made_up is not None
    assert made_up.state == "registered"
    assert made_up.nameservers == ("ns1.anything.com", "ns2.anything.com")
    assert made_up.registered == NOW - timedelta(days=3650)  # the state's default
    assert "anything.com" not in scenario.domains  # made up on demand, not stored
    listed = scenario.domain("held.com")
    assert listed is not None
    assert listed.state == "redemption"


@pytest.mark.parametrize(
    "name",
    ["a.b.com", "x.org", "nic.com", "bad_label.com", "com"],
)
def test_only_a_label_under_a_served_tld_is_made_up(name: str) -> None:
    assert parse_scenario(SCENARIO, now=NOW).domain(name) is None


def test_without_default_unlisted_names_do_not_exist() -> None:
    scenario = parse_scenario('[world]\ntlds = ["com"]\n', now=NOW)
    assert scenario.tlds == ("com",)
    assert scenario.domain("anything.com") is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[world]\ndefault_state = "sleeping"\n', "default_state"),
        ("[world]\ntlds = [1]\n", "'tlds'"),
        ('[world]\ntlds = ["co.uk"]\n', "one label"),
    ],
)
def test_bad_world_keys_are_named(text: str, fragment: str) -> None:
    with pytest.raises(ScenarioError, match=fragment):
        parse_scenario(text, now=NOW)


def test_rdap_answers_made_up_and_listed_domains(world: World) -> None:
    made_up = rdap(world, "somebody.com")
    assert made_up.status_code == 200
    assert made_up.json()["ldhName"] == "SOMEBODY.COM"
    assert "active" in made_up.json()["status"]
    assert rdap(world, "gone.test").status_code == 404
    assert rdap(world, "broken.com").status_code == 500
    assert rdap(world, "a.b.com").status_code == 404


def test_dns_delegates_made_up_domains_with_glue(world: World) -> None:
    response = ns(world, "somebody.com")
    assert response.rcode() == dns.rcode.NOERROR
    targets = {r.target.to_text() for rrset in response.authority for r in rrset}
    assert targets == {"ns1.somebody.com.", "ns2.somebody.com."}
    assert {rrset.name.to_text() for rrset in response.additional} == targets
    below = dns.query.udp(
        dns.message.make_query("www.somebody.com", "A"),
        world.dns_host,
        port=world.dns_port,
        timeout=2,
    )
    assert below.authority[0].name.to_text() == "somebody.com."  # a referral too


def test_dns_keeps_listed_exceptions(world: World) -> None:
    for name in ("gone.test", "held.com"):
        response = ns(world, name)
        assert response.rcode() == dns.rcode.NXDOMAIN, name
        assert response.authority[0].rdtype == dns.rdatatype.SOA


def test_fastly_answers_made_up_domains(world: World) -> None:
    response = httpx.get(
        f"{world.fastly_url}{STATUS_PATH}",
        params={"domain": "somebody.com"},
        headers={"Fastly-Key": world.fastly_key},
        timeout=5,
    )
    assert response.json()["status"] == "active"


def test_apex_zones_with_the_scenario_answer_like_complete_zones() -> None:
    """The builtin server's on-demand delegations equal the zone files NSD gets."""
    scenario = demo_scenario(now=NOW)
    full = build_zones(scenario, 7)
    apex = build_apex_zones(scenario, 7)
    names = [*scenario.domains, "never-registered.test", "a.b.alive.test", "test", "nic.test"]
    for name in names:
        for rdtype in ("NS", "A", "SOA", "DS"):
            query = dns.message.make_query(name, rdtype)
            expected = answer(query, full)
            got = answer(query, apex, scenario)
            assert got.rcode() == expected.rcode(), (name, rdtype)
            assert got.flags == expected.flags, (name, rdtype)
            for section in ("answer", "authority", "additional"):
                assert sorted(map(str, getattr(got, section))) == sorted(
                    map(str, getattr(expected, section))
                ), (name, rdtype, section)


def test_a_big_world_starts_without_building_its_zones() -> None:
    lines = ['[world]\ndefault_state = "registered"\ntlds = ["com"]\n']
    lines += [f'[[domains]]\nname = "d{i}.com"\nstate = "expiring"\n' for i in range(2000)]
    with World(parse_scenario("".join(lines), now=NOW)) as big:
        assert ns(big, "d1999.com").rcode() == dns.rcode.NXDOMAIN
        assert ns(big, "d2000.com").rcode() == dns.rcode.NOERROR
        assert "zones" not in vars(big._live.current)  # only NSD needs the complete zones


def test_default_mx_gives_made_up_domains_their_mail_hosts() -> None:
    """``[world] default_mx``: every made-up domain serves that MX (bench/cycle.py's
    world: mail at a well-known provider, as most custom domains have)."""
    scenario = parse_scenario(
        SCENARIO.replace(
            'tlds = ["com", "test"]', 'tlds = ["com", "test"]\ndefault_mx = ["aspmx.l.google.com"]'
        ),
        now=NOW,
    )
    made_up = scenario.domain("somebody.com")
    assert made_up is not None
    assert made_up.mx == ("aspmx.l.google.com",)
    zones = build_apex_zones(scenario, 1)
    query = dns.message.make_query("somebody.com", "MX")
    reply = answer(query, zones, scenario)
    assert [r.exchange.to_text() for rrset in reply.answer for r in rrset] == [
        "aspmx.l.google.com."
    ]
    assert parse_scenario(SCENARIO, now=NOW).domain("somebody.com").mx == ()  # type: ignore[union-attr]
