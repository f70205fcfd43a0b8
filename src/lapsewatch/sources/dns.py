"""DNS delegation: is the domain in its TLD's zone at all?

A domain on hold, in redemption or pending delete is taken out of the zone, so
NXDOMAIN is a strong, cheap signal. The answer works the same from a recursive
resolver (NS in the answer section) and from the TLD's authoritative server
(a referral: NS in the authority section).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from lapsewatch.config import Settings
from lapsewatch.sources.interface import Observation, Outcome, Source, truncate

__all__ = ["MAX_MAIL_HOSTS", "PARKING_NAMESERVER_DOMAINS", "DnsSource", "system_nameservers"]

MAX_MAIL_HOSTS = 10
"""Most MX targets kept per domain (a hostile zone may list hundreds)."""

PARKING_NAMESERVER_DOMAINS = frozenset(
    {
        "above.com",
        "afternic.com",
        "bodis.com",
        "dan.com",
        "hugedomains.com",
        "parkingcrew.net",
        "parklogic.com",
        "sedoparking.com",
        "uniregistrymarket.link",
    }
)
"""Name server domains of parking and domain-sale services (heuristic, not exhaustive)."""


def system_nameservers() -> tuple[tuple[str, int], ...]:
    """The resolvers from ``/etc/resolv.conf`` (empty when there is none)."""
    try:
        resolver = dns.resolver.Resolver()
    except dns.exception.DNSException:
        return ()
    return tuple((str(ns), resolver.port) for ns in resolver.nameservers)


def _is_parking(nameserver: str) -> bool:
    labels = nameserver.split(".")
    return any(".".join(labels[i:]) in PARKING_NAMESERVER_DOMAINS for i in range(len(labels)))


def _referral(response: dns.message.Message) -> bool:
    """A referral to the domain's own servers (asked at a TLD's server, not a resolver):
    it says nothing of the domain's records, so the address is not asked either (the
    mail hosts read as none, as they always have in that setup)."""
    return not response.flags & dns.flags.AA and any(
        rrset.rdtype == dns.rdatatype.NS for rrset in response.authority
    )


class DnsSource(Source):
    """Ask for the domain's NS records at the configured resolvers."""

    name = "dns"
    paces_requests = True

    def __init__(
        self,
        nameservers: tuple[tuple[str, int], ...] = (),
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        mail_hosts: bool = True,
    ) -> None:
        """``mail_hosts``: also read a delegated domain's MX records (one more query)."""
        self._nameservers = nameservers or system_nameservers()
        self._mail_hosts = mail_hosts
        self._timeout = timeout
        self._attempts = attempts
        self._zones_seen: set[tuple[str, int, dns.name.Name]] = set()

    async def observe(self, domain: str) -> Observation:
        return await self.observe_with(domain)

    async def observe_with(self, domain: str, *, mail_hosts: bool = True) -> Observation:
        """The delegation; with ``mail_hosts`` (and the source's ``mail_hosts``), the MX
        of a delegated domain too (one more query)."""
        if not self._nameservers:
            return Observation.error(self.name, domain, "no DNS resolver configured")
        failures: list[str] = []
        for attempt in range(self._attempts):
            host, port = self._nameservers[attempt % len(self._nameservers)]
            try:
                response = await self._query(domain, host, port)
            except dns.exception.Timeout:
                failures.append(f"no answer from {host}:{port} within {self._timeout:g} s")
                continue
            except (dns.exception.DNSException, OSError, ValueError, EOFError) as exc:
                failures.append(f"bad answer from {host}:{port}: {type(exc).__name__}")
                continue
            rcode = response.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                doubt = await self._doubt_nxdomain(domain, response, host, port)
                if doubt:
                    failures.append(doubt)
                    continue
            if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                observation = self._interpret(domain, response, f"{host}:{port}")
                if observation.found and self._mail_hosts and mail_hosts:
                    observation = await self._with_mail_hosts(observation, host, port)
                return observation
            if rcode == dns.rcode.REFUSED and self.pacer is not None:
                self.pacer.refused(None, f"{host}:{port}")  # how a busy server says 429
            failures.append(f"{dns.rcode.to_text(rcode)} from {host}:{port}")
        return Observation.error(self.name, domain, "; ".join(dict.fromkeys(failures)))

    async def _doubt_nxdomain(
        self, domain: str, response: dns.message.Message, host: str, port: int
    ) -> str | None:
        """Why this NXDOMAIN is not to be trusted, or None.

        NXDOMAIN is the one DNS answer that can unverify addresses, and a broken,
        offline or hijacking resolver says it for everything. A genuine one carries
        the SOA of the zone that proves the name absent (RFC 2308), and that zone
        itself must exist at the same resolver.
        """
        name = dns.name.from_text(domain)
        zone = next((r.name for r in response.authority if r.rdtype == dns.rdatatype.SOA), None)
        server = f"{host}:{port}"
        if zone is None or zone == name or not name.is_subdomain(zone):
            return f"NXDOMAIN from {server} without the parent zone's SOA: resolver not trusted"
        if (host, port, zone) in self._zones_seen:
            return None
        try:
            check = await self._query(zone.to_text(), host, port, dns.rdatatype.SOA)
        except (dns.exception.DNSException, OSError, ValueError, EOFError) as exc:
            return f"could not confirm zone {zone} at {server}: {type(exc).__name__}"
        if check.rcode() != dns.rcode.NOERROR or not any(
            r.rdtype == dns.rdatatype.SOA and r.name == zone for r in check.answer
        ):
            return f"{server} denies zone {zone} too: resolver not trusted"
        self._zones_seen.add((host, port, zone))
        return None

    async def _with_mail_hosts(self, observation: Observation, host: str, port: int) -> Observation:
        """The observation with the domain's MX targets, asked at the same resolver.

        Tried as the delegation is (``attempts``); a failure leaves ``mail_hosts``
        unknown (``None``), never an error of the delegation answer. A null MX (RFC
        7505, ``.``) is no mail host; no MX at all is the implicit MX, the domain's
        address (:meth:`_implicit_mail_hosts`).
        """
        domain = observation.domain
        response = await self._ask(domain, host, port, dns.rdatatype.MX)
        if isinstance(response, str):
            return replace(observation, detail=f"{observation.detail}; MX not read: {response}")
        name = dns.name.from_text(domain)
        records: list[tuple[int, str]] = []
        published = False
        for rrset in response.answer:
            if rrset.name == name and rrset.rdtype == dns.rdatatype.MX:
                published = True
                for rdata in rrset:
                    target = rdata.exchange.to_text(omit_final_dot=True).lower()
                    if target and target != ".":
                        records.append((int(rdata.preference), target))
        hosts = tuple(dict.fromkeys(target for _, target in sorted(records)))[:MAX_MAIL_HOSTS]
        evidence = truncate(f"{observation.evidence}\n;; MX\n{response.to_text()}")
        if not published and not _referral(response):  # a TLD's server cannot tell
            implicit = await self._implicit_mail_hosts(domain, host, port)
            if implicit is None:
                detail = f"{observation.detail}; no MX, and its address could not be read"
                return replace(observation, detail=detail, evidence=evidence)
            hosts, answer = implicit
            evidence = truncate(f"{evidence}\n;; no MX: address\n{answer}")
        detail = observation.detail
        if hosts:
            more = f" and {len(hosts) - 4} more" if len(hosts) > 4 else ""
            detail = f"{detail}; mail hosts: {', '.join(hosts[:4])}{more}"
        return replace(
            observation,
            detail=detail,
            mail_hosts=hosts,
            evidence=evidence,
        )

    async def _implicit_mail_hosts(
        self, domain: str, host: str, port: int
    ) -> tuple[tuple[str, ...], str] | None:
        """Where mail goes for a domain that publishes no MX (RFC 5321 §5.1, the implicit
        MX: the domain's own address), as address literals (``[192.0.2.1]``), with the
        answer; ``None`` when it could not be read.

        So an owner who publishes no MX still has mail hosts to compare: the grace
        name-server rule tells a move of DNS hosting (same address) from a sale. One A
        query (AAAA is not asked: one query more for a rare case, IPv6-only mail
        without MX).
        """
        response = await self._ask(domain, host, port, dns.rdatatype.A)
        if isinstance(response, str):
            return None
        found = sorted(
            {
                f"[{rdata.address}]"
                for rrset in response.answer
                if rrset.rdtype == dns.rdatatype.A
                for rdata in rrset
            }
        )
        return tuple(found[:MAX_MAIL_HOSTS]), response.to_text()

    async def _ask(
        self, domain: str, host: str, port: int, rdtype: dns.rdatatype.RdataType
    ) -> dns.message.Message | str:
        """A NOERROR answer about ``domain``'s own records at the resolver that answered
        the delegation, tried up to ``attempts`` times; else why not (a one-try read
        failing now and then would leave a grace check unsettled twice in a row)."""
        why = "no attempt"
        for _ in range(self._attempts):
            try:
                response = await self._query(domain, host, port, rdtype)
            except (dns.exception.DNSException, OSError, ValueError, EOFError) as exc:
                why = type(exc).__name__
                continue
            if response.rcode() == dns.rcode.NOERROR:
                return response
            if response.rcode() == dns.rcode.REFUSED and self.pacer is not None:
                self.pacer.refused(None, f"{host}:{port}")  # how a busy server says 429
            why = dns.rcode.to_text(response.rcode())
        return why

    async def _query(
        self, domain: str, host: str, port: int, rdtype: dns.rdatatype.RdataType = dns.rdatatype.NS
    ) -> dns.message.Message:
        query = dns.message.make_query(domain, rdtype)
        server = f"{host}:{port}"
        if self.pacer is not None:
            await self.pacer.request(server)
        try:
            response = await dns.asyncquery.udp(query, host, port=port, timeout=self._timeout)
        except dns.exception.Timeout:
            if self.pacer is not None:
                self.pacer.timed_out(server)
            raise
        if response.flags & dns.flags.TC:
            if self.pacer is not None:
                await self.pacer.request(server)  # not in the try: a NotSent is no timeout
            try:
                response = await dns.asyncquery.tcp(query, host, port=port, timeout=self._timeout)
            except dns.exception.Timeout:
                if self.pacer is not None:
                    self.pacer.timed_out(server)
                raise
        return response

    def _interpret(self, domain: str, response: dns.message.Message, server: str) -> Observation:
        evidence = truncate(f";; from {server}\n{response.to_text()}")
        if response.rcode() == dns.rcode.NXDOMAIN:
            return Observation(
                source=self.name,
                domain=domain,
                outcome=Outcome.ANSWERED,
                detail=f"NXDOMAIN: not in the DNS ({server})",
                found=False,
                status=("undelegated",),
                evidence=evidence,
            )
        name = dns.name.from_text(domain)
        nameservers: list[str] = []
        has_soa = False
        for rrset in (*response.answer, *response.authority):
            if rrset.name != name:
                continue
            if rrset.rdtype == dns.rdatatype.NS:
                nameservers.extend(r.target.to_text(omit_final_dot=True).lower() for r in rrset)
            elif rrset.rdtype == dns.rdatatype.SOA:
                has_soa = True
        if not nameservers and not has_soa:
            return Observation(
                source=self.name,
                domain=domain,
                outcome=Outcome.ANSWERED,
                detail=f"name exists but has no delegation ({server})",
                found=None,
                status=("no delegation",),
                evidence=evidence,
            )
        parked = sorted({ns for ns in nameservers if _is_parking(ns)})
        status = ("delegated", "parked") if parked else ("delegated",)
        listed = ", ".join(sorted(set(nameservers))[:4]) or "SOA"
        detail = f"delegated to {listed}"
        if parked:
            detail += " (a parking / domain-sale service)"
        return Observation(
            source=self.name,
            domain=domain,
            outcome=Outcome.ANSWERED,
            detail=f"{detail} ({server})",
            found=True,
            status=status,
            nameservers=tuple(sorted(set(nameservers))),  # an RRset has no order
            evidence=evidence,
        )


def from_settings(settings: Settings, client: object, built: Mapping[str, Source]) -> DnsSource:
    """The catalog's factory (:mod:`lapsewatch.source_catalog`); no HTTP client."""
    return DnsSource(settings.dns_nameservers, timeout=settings.timeout, attempts=settings.attempts)
