"""TLD zone content generated from a scenario, shared by the builtin server and NSD.

Both DNS back ends answer from exactly these zones (the builtin server reads the
dnspython objects, NSD reads ``zone_text``), so they agree on the wire.

The builtin server does not hold every delegation in memory: it answers from
the zones' apex records (:func:`build_apex_zones`: SOA, NS and the TLD server's
address) plus :func:`delegation` of the scenario's domain, made when asked —
the same records :func:`build_zones` writes for NSD, so a world of a million
domains starts at once. A ``default_state`` world's unlisted domains exist only
that way: NSD, which reads zone files, serves the listed domains alone and
answers NXDOMAIN for the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping

import dns.name
import dns.node
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rrset
import dns.zone

from lapsewatch.world.scenario import DomainScenario, Scenario

__all__ = [
    "LOOPBACK",
    "NS_TTL",
    "SOA_MINIMUM",
    "Delegation",
    "apex_nameserver",
    "build_apex_zones",
    "build_mail_zones",
    "build_zones",
    "delegation",
    "mail_zone",
    "mx_rrset",
    "zone_text",
]

LOOPBACK = "127.0.0.1"
NS_TTL = 3600
SOA_MINIMUM = 60
"""Negative-answer TTL: short, because a world's domains change state while it runs."""

_IN = dns.rdataclass.IN
_LOOPBACK_A = dns.rdata.from_text(_IN, dns.rdatatype.A, LOOPBACK)

Glue = list[tuple[dns.name.Name, dns.rdataset.Rdataset]]
Delegation = tuple[dns.name.Name, dns.rdataset.Rdataset, Glue]
"""The zone cut's name, its NS set, and the glue (name, A set) of in-bailiwick servers."""


def apex_nameserver(tld: str) -> str:
    """The TLD's own name server; in-zone, with glue pointing at loopback."""
    return f"a.nic.{tld}"


def build_zones(scenario: Scenario, serial: int) -> dict[str, dns.zone.Zone]:
    """One zone per served TLD, keyed by TLD, with every listed delegated domain."""
    by_tld: dict[str, list[DomainScenario]] = {tld: [] for tld in scenario.tlds}
    for domain in scenario.domains.values():
        if domain.delegated and domain.tld in by_tld:
            by_tld[domain.tld].append(domain)
    return {tld: _build_zone(tld, by_tld[tld], serial) for tld in scenario.tlds}


def build_mail_zones(scenario: Scenario, serial: int) -> dict[str, dns.zone.Zone]:
    """For each listed delegated domain with mail hosts, its own zone (keyed by its name)
    holding its MX records: NSD then answers MX as the domain's own server would (the
    builtin server answers those from the scenario directly)."""
    return {
        domain.name: mail_zone(domain, serial)
        for domain in scenario.domains.values()
        if domain.delegated and domain.mx and domain.tld in scenario.tlds
    }


def mx_rrset(domain: DomainScenario) -> dns.rrset.RRset:
    """The domain's MX records: preference 10, 20, … in the scenario's order."""
    return dns.rrset.from_text_list(
        domain.name + ".",
        NS_TTL,
        "IN",
        "MX",
        [f"{10 * (i + 1)} {host}." for i, host in enumerate(domain.mx)],
    )


def mail_zone(domain: DomainScenario, serial: int) -> dns.zone.Zone:
    """The domain's own zone: SOA, its name servers (in-zone ones at loopback), MX."""
    zone = dns.zone.Zone(dns.name.from_text(domain.name), relativize=False)
    primary = domain.nameservers[0] if domain.nameservers else f"ns1.{domain.name}"
    soa = f"{primary}. hostmaster.{domain.name}. {serial} 1800 900 604800 {SOA_MINIMUM}"
    _add(zone, domain.name, "SOA", soa)
    for host in domain.nameservers:
        _add(zone, domain.name, "NS", f"{host}.")
        if host.endswith(f".{domain.name}"):
            _add(zone, host, "A", LOOPBACK)
    for rdata in mx_rrset(domain):
        _add(zone, domain.name, "MX", rdata.to_text())
    return zone


def build_apex_zones(scenario: Scenario, serial: int) -> dict[str, dns.zone.Zone]:
    """The same zones without their delegations (see the module's docstring)."""
    return {tld: _build_zone(tld, (), serial) for tld in scenario.tlds}


def delegation(domain: DomainScenario) -> Delegation:
    """The records a TLD zone holds for a delegated domain."""
    owner = dns.name.from_text(domain.name)
    ns = dns.rdataset.Rdataset(_IN, dns.rdatatype.NS, ttl=NS_TTL)
    glue: Glue = []
    for host in domain.nameservers:
        target = dns.name.from_text(host)
        # The constructor, not from_text(): a million of these must be cheap.
        ns.add(dns.rdtypes.ANY.NS.NS(_IN, dns.rdatatype.NS, target))  # type: ignore[no-untyped-call]
        if target.is_subdomain(owner) and target != owner:  # in-bailiwick: the registry holds glue
            a = dns.rdataset.Rdataset(_IN, dns.rdatatype.A, ttl=NS_TTL)
            a.add(_LOOPBACK_A)
            glue.append((target, a))
    return owner, ns, glue


def _build_zone(tld: str, domains: Iterable[DomainScenario], serial: int) -> dns.zone.Zone:
    origin = dns.name.from_text(tld)
    zone = dns.zone.Zone(origin, relativize=False)
    apex_ns = apex_nameserver(tld)
    soa = f"{apex_ns}. hostmaster.nic.{tld}. {serial} 1800 900 604800 {SOA_MINIMUM}"
    _add(zone, tld, "SOA", soa)
    _add(zone, tld, "NS", f"{apex_ns}.")
    _add(zone, apex_ns, "A", LOOPBACK)
    # Straight into the node table: find_node() per record costs more than the record.
    nodes = zone.nodes
    for domain in domains:
        owner, ns, glue = delegation(domain)
        _merge(zone, nodes, owner, ns)
        for name, a in glue:
            _merge(zone, nodes, name, a)
    return zone


def _merge(
    zone: dns.zone.Zone,
    nodes: MutableMapping[dns.name.Name, dns.node.Node],
    name: dns.name.Name,
    rdataset: dns.rdataset.Rdataset,
) -> None:
    node = nodes.get(name)
    if node is None:
        node = nodes[name] = zone.node_factory()
    target = node.find_rdataset(_IN, rdataset.rdtype, create=True)
    for rdata in rdataset:
        target.add(rdata, rdataset.ttl)


def _add(zone: dns.zone.Zone, owner: str, rdtype: str, text: str) -> None:
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
    node = zone.find_node(dns.name.from_text(owner), create=True)
    rdataset = node.find_rdataset(dns.rdataclass.IN, rdata.rdtype, create=True)
    rdataset.add(rdata, NS_TTL)


def zone_text(zone: dns.zone.Zone) -> str:
    """Master-file text with absolute names, as NSD reads it."""
    text = zone.to_text(sorted=True, relativize=False)
    return text if isinstance(text, str) else text.decode()
