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


def test_the_mx_is_read_only_when_asked(world: World) -> None:
    """``observe_with(mail_hosts=False)``: the caller has the mail hosts stored; one query
    (counted at the world's DNS server) and ``mail_hosts`` left ``None`` (not read).
    Read: NS and MX (the world's server is the TLD's: its referral is no "no MX", so the
    implicit MX's A query is not sent)."""
    settings = Settings.from_env({**world.env(), "LAPSEWATCH_TIMEOUT": "0.5"})
    source = DnsSource(settings.dns_nameservers, timeout=settings.timeout, attempts=2)
    world.dns_requests.reset()
    skipped = asyncio.run(source.observe_with("alive.test", mail_hosts=False))
    assert skipped.found
    assert skipped.mail_hosts is None
    if world.dns_requests.total:  # the builtin server counts; NSD does not
        assert world.dns_requests["alive.test"] == 1
    world.dns_requests.reset()
    read = asyncio.run(source.observe_with("alive.test", mail_hosts=True))
    assert read.found
    assert read.mail_hosts is not None
    if world.dns_requests.total:
        assert world.dns_requests["alive.test"] == 2


def test_a_tld_the_server_does_not_serve_is_an_error(world: World) -> None:
    obs = observe(world, "somewhere.invalid")
    assert obs.outcome is Outcome.ERROR
    assert "REFUSED" in obs.detail


def test_nothing_listening_is_an_error() -> None:
    source = DnsSource((("127.0.0.1", 9),), timeout=0.3, attempts=2)
    obs = asyncio.run(source.observe("alive.test"))
    assert obs.outcome is Outcome.ERROR
    assert obs.found is None


def test_a_resolver_that_denies_everything_is_not_trusted() -> None:
    """A broken or hijacking resolver says NXDOMAIN for every name, with no SOA.

    That must never read as "available" (it would unverify every address).
    """
    import socket
    import threading

    import dns.message
    import dns.rcode

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def lie() -> None:
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            reply = dns.message.make_response(dns.message.from_wire(wire))
            reply.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=lie, daemon=True)
    thread.start()
    try:
        source = DnsSource((("127.0.0.1", sock.getsockname()[1]),), timeout=0.5, attempts=2)
        obs = asyncio.run(source.observe("python.org"))
    finally:
        stop.set()
        thread.join()
        sock.close()
    assert obs.outcome is Outcome.ERROR
    assert "not trusted" in obs.detail


class _Zone:
    """A loopback resolver answering for one domain from a dict of records (rdtype name
    to rdata texts; a missing type is NODATA, ``None`` drops the query: a timeout)."""

    def __init__(self, domain: str, records: dict[str, list[str] | None]) -> None:
        import socket
        import threading

        self.domain, self.records = domain, records
        self.asked: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import dns.message
        import dns.rdatatype
        import dns.rrset

        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            question = query.question[0]
            kind = dns.rdatatype.to_text(question.rdtype)
            self.asked.append(kind)
            texts = self.records.get(kind, [])
            if texts is None:
                continue
            reply = dns.message.make_response(query)
            if "referral" in self.records and kind != "NS":  # a TLD's server: not the zone's
                reply.authority.append(dns.rrset.from_text_list(question.name, 300, "IN", "NS", NS))
            elif texts:
                reply.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", kind, texts))
            self.sock.sendto(reply.to_wire(), peer)

    def observe(self) -> Observation:
        source = DnsSource((("127.0.0.1", self.sock.getsockname()[1]),), timeout=0.3, attempts=1)
        return asyncio.run(source.observe(self.domain))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


NS = ["ns1.host.example.", "ns2.host.example."]


@pytest.mark.parametrize(
    ("records", "mail_hosts", "asked"),
    [
        # No MX: mail goes to the domain's own address (RFC 5321 5.1).
        ({"NS": NS, "A": ["192.0.2.9", "192.0.2.7"]}, ("[192.0.2.7]", "[192.0.2.9]"), 3),
        # An MX: its hosts, and no address query.
        ({"NS": NS, "MX": ["10 mx.mail.example."], "A": ["192.0.2.7"]}, ("mx.mail.example",), 2),
        # A null MX (RFC 7505): no mail at all, no address query.
        ({"NS": NS, "MX": ["0 ."], "A": ["192.0.2.7"]}, (), 2),
        # No MX and no address: no mail host.
        ({"NS": NS}, (), 3),
        # The address query unanswered: the mail hosts are not known (never "none").
        ({"NS": NS, "A": None}, None, 3),
        # A referral (the TLD's server asked): no "no MX", so no address query.
        ({"NS": NS, "A": ["192.0.2.7"], "referral": []}, (), 2),
    ],
    ids=["implicit", "mx", "null-mx", "nothing", "a-timeout", "referral"],
)
def test_a_domain_without_mx_has_its_address_as_mail_host(
    records: dict[str, list[str] | None], mail_hosts: tuple[str, ...] | None, asked: int
) -> None:
    """The grace name-server rule compares mail hosts: an owner who publishes no MX must
    have some too, or moving DNS hosting in the grace reads as a sale (issue #17)."""
    zone = _Zone("owner.example", records)
    try:
        obs = zone.observe()
    finally:
        zone.close()
    assert obs.outcome is Outcome.ANSWERED, obs.detail
    assert obs.found
    assert obs.mail_hosts == mail_hosts
    assert len(zone.asked) == asked, zone.asked
