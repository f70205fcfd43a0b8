"""The local world: each fake server says what the scenario specifies, on the wire."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from lapsewatch.config import Settings
from lapsewatch.dates import parse_datetime
from lapsewatch.world import (
    DomainScenario,
    Scenario,
    ScenarioError,
    World,
    demo_scenario,
    load_scenario,
    parse_scenario,
)
from lapsewatch.world.fastly_server import STATUS_PATH
from tests.services import require_service

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
HANG = 0.3


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=HANG) as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as http:
        yield http


def rdap(world: World, client: httpx.Client, name: str, tld: str = "test") -> httpx.Response:
    return client.get(
        f"{world.rdap_url}/rdap/{tld}/domain/{name}",
        headers={"Accept": "application/rdap+json"},
    )


def fastly(world: World, client: httpx.Client, name: str, key: str | None = None) -> httpx.Response:
    return client.get(
        f"{world.fastly_url}{STATUS_PATH}",
        params={"domain": name, "scope": "estimate"},
        headers={"Fastly-Key": world.fastly_key if key is None else key},
    )


def query(world: World, name: str, rdtype: str = "A", *, tcp: bool = False) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(message, world.dns_host, port=world.dns_port, timeout=2)


def events(document: dict[str, Any]) -> dict[str, str]:
    return {e["eventAction"]: e["eventDate"] for e in document["events"]}


# -- scenario ---------------------------------------------------------------------------------


def test_defaults_follow_the_state() -> None:
    scenario = parse_scenario(
        """
        [[domains]]
        name = "a.test"
        [[domains]]
        name = "b.test"
        state = "expiring"
        status_style = "camel"
        [[domains]]
        name = "c.test"
        state = "for_sale"
        [[domains]]
        name = "d.test"
        state = "available"
        """,
        now=NOW,
    )
    a, b, c, d = scenario.domains.values()
    assert a.statuses == ("active", "client transfer prohibited")
    assert a.registered == NOW - timedelta(days=3650)
    assert a.expires == NOW + timedelta(days=200)
    assert a.nameservers == ("ns1.a.test", "ns2.a.test")
    assert a.delegated
    assert b.statuses == ("clientHold", "autoRenewPeriod")
    assert b.expires == NOW - timedelta(days=3)
    assert not b.delegated
    assert b.fastly_status == "expiring"
    assert c.nameservers == ("ns1.sedoparking.com", "ns2.sedoparking.com")
    assert c.fastly_status == "active parked marketed"
    assert d.registered is None
    assert d.statuses == ()
    assert scenario.tlds == ("test",)


def test_dates_absolute_relative_and_toml_native() -> None:
    domain = DomainScenario.make(
        "x.test",
        now=NOW,
        registered="2020-02-03",
        expires="+2d",
        last_changed="2021-01-01T10:00:00+02:00",
    )
    assert domain.registered == datetime(2020, 2, 3, tzinfo=UTC)
    assert domain.expires == NOW + timedelta(days=2)
    assert domain.last_changed == datetime(2021, 1, 1, 8, tzinfo=UTC)
    native = parse_scenario('[[domains]]\nname = "y.test"\nregistered = 2019-05-06\n', now=NOW)
    assert native.domains["y.test"].registered == datetime(2019, 5, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[domains]]\nname = "a.test"\ncolour = "red"', "'colour'"),
        ('[[domains]]\nname = "a.test"\nstate = "dead"', "'state'"),
        ('[[domains]]\nname = "a.test"\nrdap = 404', "'rdap'"),
        ('[[domains]]\nname = "A.test"', "'name'"),
        ('[[domains]]\nname = "test"', "'name'"),
        ('[[domains]]\nstate = "registered"', "'name'"),
        ('[[domains]]\nname = "a.test"\nexpires = "soon"', "'expires'"),
        ('[[domains]]\nname = "a.test"\nstatuses = "active"', "'statuses'"),
        ('[[domains]]\nname = "a.test"\n[[domains]]\nname = "a.test"', "twice"),
        ('[[domains]]\nname = "nic.test"', "reserved"),
        ("[world]\nrdap_missing = []", "[world]"),
        ("[other]", "top-level"),
        ("[[domains]\n", "TOML"),
    ],
)
def test_bad_scenarios_name_the_culprit(text: str, fragment: str) -> None:
    with pytest.raises(ScenarioError, match=r"my\.toml") as error:
        parse_scenario(text, source="my.toml")
    assert fragment in str(error.value)


def test_bad_domain_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[[domains]]\nname = "ok.test"\n[[domains]]\nname = "bad.test"\ndns = "x"\n')
    with pytest.raises(ScenarioError, match=r"s\.toml: domains\[1\] \('bad\.test'\): key 'dns'"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


def test_demo_scenario_covers_every_state_and_fault() -> None:
    scenario = demo_scenario(now=NOW)
    domains = scenario.domains.values()
    assert {d.state for d in domains} >= {
        "registered",
        "expiring",
        "redemption",
        "pending_delete",
        "available",
        "for_sale",
        "reregistered",
    }
    assert {d.rdap for d in domains} >= {"404", "429", "500", "timeout", "invalid_json"}
    assert {d.date_style for d in domains} == {"z", "fraction", "offset", "nozone"}
    assert any(d.status_style == "camel" for d in domains)
    assert any(not d.expiration_event for d in domains)
    assert scenario.rdap_missing_tlds == {"nordap", "wz"}
    assert scenario.whois_tlds == ("wz",)
    assert any(d.mx for d in domains)


# -- RDAP ---------------------------------------------------------------------------------------


def test_bootstrap_file_and_url_list_served_tlds(world: World, client: httpx.Client) -> None:
    served = client.get(world.bootstrap_url).json()
    on_disk = json.loads(world.bootstrap_path.read_text())
    for document in (served, on_disk):
        assert document["version"] == "1.0"
        services = {tld: urls[0] for tlds, urls in document["services"] for tld in tlds}
        assert services == {
            "test": f"{world.rdap_url}/rdap/test/",
            "zz": f"{world.rdap_url}/rdap/zz/",
        }


def test_registered_domain_object(world: World, client: httpx.Client) -> None:
    response = rdap(world, client, "Alive.TEST")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/rdap+json"
    document = response.json()
    assert document["objectClassName"] == "domain"
    assert document["ldhName"] == "ALIVE.TEST"
    assert document["status"] == ["active", "client transfer prohibited"]
    assert "rdap_level_0" in document["rdapConformance"]
    assert document["notices"]
    assert [ns["ldhName"] for ns in document["nameservers"]] == ["NS1.ALIVE.TEST", "NS2.ALIVE.TEST"]
    dates = events(document)
    assert set(dates) == {
        "registration",
        "expiration",
        "last changed",
        "last update of RDAP database",
    }
    assert dates["expiration"] == (NOW + timedelta(days=200)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("name", "statuses", "expires_days"),
    [
        ("lapsing.test", ["client hold", "auto renew period"], -3),
        ("redeeming.test", ["redemption period"], -40),
        ("deleting.test", ["pending delete"], -70),
        ("camel.test", ["clientHold", "autoRenewPeriod"], -3),
        ("caught.test", ["active", "client transfer prohibited"], 345),
    ],
)
def test_lifecycle_states(
    world: World, client: httpx.Client, name: str, statuses: list[str], expires_days: int
) -> None:
    document = rdap(world, client, name).json()
    assert document["status"] == statuses
    assert parse_datetime(events(document)["expiration"]) == NOW + timedelta(days=expires_days)


def test_reregistered_is_young(world: World, client: httpx.Client) -> None:
    dates = events(rdap(world, client, "caught.test").json())
    assert parse_datetime(dates["registration"]) == NOW - timedelta(days=20)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("alive.test", r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"),
        ("fraction.test", r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"),
        ("offset.test", r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+02:00$"),
        ("nozone.test", r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$"),
    ],
)
def test_date_styles(world: World, client: httpx.Client, name: str, pattern: str) -> None:
    expiration = events(rdap(world, client, name).json())["expiration"]
    assert re.match(pattern, expiration)
    assert parse_datetime(expiration) == NOW + timedelta(days=200)


def test_cctld_without_expiration_event(world: World, client: httpx.Client) -> None:
    dates = events(rdap(world, client, "example.zz", tld="zz").json())
    assert "expiration" not in dates
    assert dates["registration"] == "2012-05-14T00:00:00Z"


@pytest.mark.parametrize("name", ["vacant.test", "never-heard-of.test", "rdap-missing.test"])
def test_not_found(world: World, client: httpx.Client, name: str) -> None:
    response = rdap(world, client, name)
    assert response.status_code == 404
    assert response.json()["errorCode"] == 404


def test_tld_without_rdap_is_not_served(world: World, client: httpx.Client) -> None:
    assert rdap(world, client, "hidden.nordap", tld="nordap").status_code == 404


def test_rdap_faults(world: World, client: httpx.Client) -> None:
    limited = rdap(world, client, "rdap-limited.test")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert rdap(world, client, "rdap-broken.test").status_code == 500
    garbled = rdap(world, client, "rdap-garbled.test")
    assert garbled.status_code == 200
    with pytest.raises(ValueError, match="Expecting value"):
        garbled.json()
    assert isinstance(rdap(world, client, "rdap-listy.test").json(), list)


def test_rdap_timeout_holds_the_request(world: World, client: httpx.Client) -> None:
    started = time.monotonic()
    assert rdap(world, client, "rdap-slow.test").status_code == 200
    assert time.monotonic() - started >= HANG
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"{world.rdap_url}/rdap/test/domain/rdap-slow.test", timeout=HANG / 3)


def test_rdap_counts_requests(world: World, client: httpx.Client) -> None:
    before = world.rdap_requests["redeeming.test"]
    rdap(world, client, "redeeming.test")
    rdap(world, client, "REDEEMING.test")
    assert world.rdap_requests["redeeming.test"] == before + 2


# -- DNS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True])
@pytest.mark.parametrize("name", ["alive.test", "www.alive.test", "caught.test"])
def test_delegated_domain_gets_a_referral(world: World, name: str, tcp: bool) -> None:
    response = query(world, name, tcp=tcp)
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.flags & dns.flags.AA
    assert not response.answer
    (ns,) = response.authority
    zone_cut = name.removeprefix("www.")
    assert ns.name.to_text() == f"{zone_cut}."
    assert sorted(r.target.to_text() for r in ns) == [f"ns1.{zone_cut}.", f"ns2.{zone_cut}."]
    assert {(rr.name.to_text(), rr[0].address) for rr in response.additional} == {
        (f"ns1.{zone_cut}.", "127.0.0.1"),
        (f"ns2.{zone_cut}.", "127.0.0.1"),
    }


def test_parked_domain_points_at_the_parking_service(world: World) -> None:
    response = query(world, "parked.test", "NS")
    (ns,) = response.authority
    assert sorted(r.target.to_text() for r in ns) == [
        "ns1.sedoparking.com.",
        "ns2.sedoparking.com.",
    ]
    assert not response.additional


@pytest.mark.parametrize(
    "name", ["lapsing.test", "redeeming.test", "deleting.test", "vacant.test", "unknown.test"]
)
def test_undelegated_domain_is_nxdomain(world: World, name: str) -> None:
    response = query(world, name)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name.to_text() == "test."


def test_tld_apex_and_other_zones(world: World) -> None:
    soa = query(world, "test", "SOA")
    assert soa.flags & dns.flags.AA
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    ns = query(world, "test", "NS", tcp=True)
    assert ns.answer[0][0].target.to_text() == "a.nic.test."
    assert ns.additional[0][0].address == "127.0.0.1"
    assert query(world, "hidden.nordap").authority[0].name.to_text() == "hidden.nordap."
    assert query(world, "example.zz").authority[0].rdtype == dns.rdatatype.NS
    assert query(world, "example.com").rcode() == dns.rcode.REFUSED


def test_dns_counts_queries(world: World) -> None:
    before = world.dns_requests["deleting.test"]
    query(world, "deleting.test")
    assert world.dns_requests["deleting.test"] == before + 1


# -- Fastly -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("alive.test", "active"),
        ("lapsing.test", "expiring"),
        ("redeeming.test", "undelegated deleting"),
        ("deleting.test", "undelegated deleting"),
        ("vacant.test", "undelegated inactive"),
        ("parked.test", "active parked marketed"),
        ("caught.test", "active"),
        ("unlisted.test", "undelegated inactive"),
        ("example.com", "unknown"),
    ],
)
def test_fastly_status(world: World, client: httpx.Client, name: str, status: str) -> None:
    response = fastly(world, client, name)
    assert response.status_code == 200
    zone = name.rsplit(".", 1)[1]
    assert response.json() == {"domain": name, "zone": zone, "status": status, "scope": "estimate"}


def test_fastly_needs_the_key(world: World, client: httpx.Client) -> None:
    response = fastly(world, client, "alive.test", key="wrong")
    assert response.status_code == 401
    assert "msg" in response.json()


# -- changing the world while it runs ---------------------------------------------------------


@pytest.fixture
def small_world() -> Iterator[World]:
    scenario = parse_scenario('[[domains]]\nname = "mine.test"\n', now=NOW)
    with World(scenario, hang_seconds=HANG, fastly_key="k") as running:
        yield running


def test_fastly_faults(small_world: World, client: httpx.Client) -> None:
    world = small_world
    for fault, code in (("401", 401), ("500", 500)):
        world.set_domain(DomainScenario.make("mine.test", fastly=fault))
        assert fastly(world, client, "mine.test").status_code == code
    world.set_domain(DomainScenario.make("mine.test", fastly="invalid_json"))
    with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
        fastly(world, client, "mine.test").json()
    world.set_domain(DomainScenario.make("mine.test", "for_sale", fastly="v2"))
    assert fastly(world, client, "mine.test").json() == {
        "status": [
            {
                "domain": "mine.test",
                "zone": "test",
                "status": "active parked marketed",
                "summary": "marketed",
            }
        ]
    }
    world.set_domain(DomainScenario.make("mine.test", fastly="timeout"))
    with pytest.raises(httpx.ReadTimeout):
        client.get(
            f"{world.fastly_url}{STATUS_PATH}?domain=mine.test",
            headers={"Fastly-Key": "k"},
            timeout=HANG / 3,
        )
    assert world.fastly_requests["mine.test"] == 5


def test_dns_faults(small_world: World) -> None:
    world = small_world
    world.set_domain(DomainScenario.make("mine.test", dns="servfail"))
    assert query(world, "www.mine.test").rcode() == dns.rcode.SERVFAIL
    world.set_domain(DomainScenario.make("mine.test", dns="garbage"))
    with pytest.raises(dns.exception.DNSException):
        query(world, "mine.test")
    with pytest.raises(dns.exception.DNSException):
        query(world, "mine.test", tcp=True)
    world.set_domain(DomainScenario.make("mine.test", dns="timeout"))
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(
            dns.message.make_query("mine.test", "A"), "127.0.0.1", port=world.dns_port, timeout=0.2
        )


def test_set_and_remove_domain(small_world: World, client: httpx.Client) -> None:
    world = small_world
    assert query(world, "mine.test").rcode() == dns.rcode.NOERROR
    world.set_domain(DomainScenario.make("mine.test", "pending_delete"))
    assert query(world, "mine.test").rcode() == dns.rcode.NXDOMAIN
    assert rdap(world, client, "mine.test").json()["status"] == ["pending delete"]
    world.remove_domain("mine.test")
    assert rdap(world, client, "mine.test").status_code == 404
    assert fastly(world, client, "mine.test", key="k").json()["status"] == "undelegated inactive"
    # A new TLD appears in the bootstrap file and the DNS.
    world.set_domain(DomainScenario.make("fresh.new"))
    assert "new" in world.bootstrap_path.read_text()
    assert rdap(world, client, "fresh.new", tld="new").status_code == 200
    assert query(world, "fresh.new").authority[0].rdtype == dns.rdatatype.NS


def test_env_points_settings_at_the_world(small_world: World) -> None:
    settings = Settings.from_env(small_world.env())
    assert settings.sources == ("rdap", "dns", "whois", "fastly")
    assert settings.whois_servers == str(small_world.whois_servers_path)
    assert settings.dns_nameservers == (("127.0.0.1", small_world.dns_port),)
    assert settings.fastly_url == small_world.fastly_url
    assert settings.fastly_key == "k"
    assert settings.rdap_bootstrap_url == small_world.bootstrap_url


def test_stop_is_fast_with_a_hanging_request() -> None:
    scenario = Scenario.from_dict({"domains": [{"name": "slow.test", "rdap": "timeout"}]})
    world = World(scenario, hang_seconds=60).start()
    errors: list[Exception] = []

    def hang() -> None:
        try:
            httpx.get(f"{world.rdap_url}/rdap/test/domain/slow.test", timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    world.stop()
    thread.join(timeout=5)
    assert time.monotonic() - started < 3
    assert not thread.is_alive()
    assert errors  # the client saw its connection closed
    with pytest.raises(RuntimeError, match="not running"):
        _ = world.rdap_url
    world.stop()  # idempotent


# -- NSD ------------------------------------------------------------------------------------------

NSD_QUERIES = [
    ("test", "SOA"),
    ("test", "NS"),
    ("alive.test", "A"),
    ("www.alive.test", "AAAA"),
    ("alive.test", "DS"),
    ("parked.test", "NS"),
    ("lapsing.test", "A"),
    ("vacant.test", "MX"),
    ("unknown.test", "A"),
    ("nic.test", "A"),
    ("a.nic.test", "A"),
    ("hidden.nordap", "A"),
    ("example.zz", "NS"),
]


def wire_view(response: dns.message.Message) -> tuple[object, ...]:
    def section(rrsets: list[Any]) -> list[str]:
        return sorted(line for rrset in rrsets for line in rrset.to_text().splitlines())

    return (
        response.rcode(),
        bool(response.flags & dns.flags.AA),
        section(response.answer),
        section(response.authority),
        section(response.additional),
    )


def test_missing_service_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAPSEWATCH_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_service("NSD", available=False)
    monkeypatch.setenv("LAPSEWATCH_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="LAPSEWATCH_REQUIRE_SERVICES"):
        require_service("NSD", available=False)
    require_service("NSD", available=True)


@pytest.mark.nsd
@pytest.mark.usefixtures("require_nsd")
def test_nsd_answers_like_the_builtin_server() -> None:
    scenario = demo_scenario(now=NOW)
    with World(scenario, dns="nsd") as real, World(scenario) as builtin:
        assert real.dns_requests.total == 0
        for name, rdtype in NSD_QUERIES:
            for tcp in (False, True):
                assert wire_view(query(real, name, rdtype, tcp=tcp)) == wire_view(
                    query(builtin, name, rdtype, tcp=tcp)
                ), (name, rdtype, tcp)
        # Changes reach NSD too (a reload, or a restart for a new TLD).
        real.set_domain(DomainScenario.make("alive.test", "expiring"))
        assert query(real, "alive.test").rcode() == dns.rcode.NXDOMAIN
        real.set_domain(DomainScenario.make("fresh.new"))
        assert query(real, "fresh.new").authority[0].rdtype == dns.rdatatype.NS
