"""TLD zone content generated from a scenario, shared by the builtin server and NSD.

Both DNS back ends answer from exactly these zones (the builtin server reads the
dnspython objects, NSD reads ``zone_text``), so they agree on the wire.
"""

from __future__ import annotations

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone

from lapsewatch.world.scenario import Scenario

__all__ = ["LOOPBACK", "NS_TTL", "SOA_MINIMUM", "apex_nameserver", "build_zones", "zone_text"]

LOOPBACK = "127.0.0.1"
NS_TTL = 3600
SOA_MINIMUM = 60
"""Negative-answer TTL: short, because a world's domains change state while it runs."""


def apex_nameserver(tld: str) -> str:
    """The TLD's own name server; in-zone, with glue pointing at loopback."""
    return f"a.nic.{tld}"


def build_zones(scenario: Scenario, serial: int) -> dict[str, dns.zone.Zone]:
    """One zone per served TLD, keyed by TLD."""
    return {tld: _build_zone(scenario, tld, serial) for tld in scenario.tlds}


def _build_zone(scenario: Scenario, tld: str, serial: int) -> dns.zone.Zone:
    origin = dns.name.from_text(tld)
    zone = dns.zone.Zone(origin, relativize=False)
    apex_ns = apex_nameserver(tld)
    soa = f"{apex_ns}. hostmaster.nic.{tld}. {serial} 1800 900 604800 {SOA_MINIMUM}"
    _add(zone, tld, "SOA", soa)
    _add(zone, tld, "NS", f"{apex_ns}.")
    _add(zone, apex_ns, "A", LOOPBACK)
    for domain in scenario.domains.values():
        if domain.tld != tld or not domain.delegated:
            continue
        for host in domain.nameservers:
            _add(zone, domain.name, "NS", f"{host}.")
            if host.endswith(f".{domain.name}"):  # in-bailiwick: the registry holds glue
                _add(zone, host, "A", LOOPBACK)
    return zone


def _add(zone: dns.zone.Zone, owner: str, rdtype: str, text: str) -> None:
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
    node = zone.find_node(dns.name.from_text(owner), create=True)
    rdataset = node.find_rdataset(dns.rdataclass.IN, rdata.rdtype, create=True)
    rdataset.add(rdata, NS_TTL)


def zone_text(zone: dns.zone.Zone) -> str:
    """Master-file text with absolute names, as NSD reads it."""
    text = zone.to_text(sorted=True, relativize=False)
    return text if isinstance(text, str) else text.decode()
