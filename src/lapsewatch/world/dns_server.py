"""The builtin authoritative DNS server: the scenario's TLD zones over UDP and TCP.

It answers like a TLD server (referrals for delegated names, NXDOMAIN with the
SOA otherwise) and can also misbehave per domain (timeout, SERVFAIL, garbage,
or a lie: NXDOMAIN with the real zone's SOA for a delegated name),
which a real server like NSD cannot be told to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

from lapsewatch.world.live import LiveScenario, RequestCounter
from lapsewatch.world.pacing import Pacing
from lapsewatch.world.scenario import DnsFault, Scenario
from lapsewatch.world.zone import Delegation, delegation, mx_rrset

__all__ = ["BuiltinDnsServer", "answer", "bind_udp_tcp"]

log = logging.getLogger(__name__)

_IN = dns.rdataclass.IN


def answer(
    query: dns.message.Message,
    zones: dict[str, dns.zone.Zone],
    scenario: Scenario | None = None,
) -> dns.message.Message:
    """The authoritative answer to ``query`` from ``zones`` (pure, no faults).

    ``zones`` are either complete (``build_zones``), or, with the ``scenario``
    they come from, only their apex (``build_apex_zones``): the delegation of
    the scenario's domain is then made when asked, including the domains a
    ``default_state`` world makes up. Both give the same answers.
    """
    response = dns.message.make_response(query)
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    qname, qtype = question.name, question.rdtype
    zone = _zone_for(qname, zones)
    if zone is None or question.rdclass != _IN or qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
        response.set_rcode(dns.rcode.REFUSED)
        return response
    origin = zone.origin
    assert origin is not None
    mail = _mail_hosts(qname, qtype, scenario)
    if mail is not None:  # as the domain's own server would answer (NSD: its mail zone)
        response.flags |= dns.flags.AA
        response.answer.append(mail)
        return response
    cut = _delegation(zone, qname, qtype)
    if cut is not None:  # a referral: the child zone is not ours, so no AA
        ns = zone.get_rdataset(cut, dns.rdatatype.NS)
        assert ns is not None
        response.authority.append(_rrset(cut, ns))
        _add_glue(response, zone, [ns])
        return response
    made_up = _scenario_delegation(zone, qname, scenario)
    if made_up is not None:
        cut, ns, glue = made_up
        if cut != qname or qtype != dns.rdatatype.DS:
            response.authority.append(_rrset(cut, ns))
            response.additional.extend(_rrset(name, a) for name, a in glue)
            return response
    response.flags |= dns.flags.AA
    node = zone.get_node(qname)
    if node is not None:
        found = (
            list(node.rdatasets)
            if qtype == dns.rdatatype.ANY
            else [r for r in node.rdatasets if r.rdtype == qtype]
        )
        if found:
            response.answer.extend(_rrset(qname, rdataset) for rdataset in found)
            _add_glue(response, zone, [r for r in found if r.rdtype == dns.rdatatype.NS])
            return response
    elif made_up is None and not any(n.is_subdomain(qname) for n in zone.nodes):
        # Not even an empty non-terminal. The server's zones hold only their apex
        # (delegations are made when asked), so this looks at a handful of names.
        response.set_rcode(dns.rcode.NXDOMAIN)
    soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
    assert soa is not None
    negative = _rrset(origin, soa)
    negative.ttl = min(soa.ttl, soa[0].minimum)  # RFC 2308
    response.authority.append(negative)
    return response


def _add_glue(
    response: dns.message.Message, zone: dns.zone.Zone, ns_sets: list[dns.rdataset.Rdataset]
) -> None:
    """Addresses of in-zone name servers, as NSD adds them even with minimal responses."""
    origin = zone.origin
    assert origin is not None
    targets = sorted({rdata.target for ns in ns_sets for rdata in ns})
    for target in (t for t in targets if t.is_subdomain(origin)):
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            glue = zone.get_rdataset(target, rdtype)
            if glue is not None:
                response.additional.append(_rrset(target, glue))


def _zone_for(qname: dns.name.Name, zones: dict[str, dns.zone.Zone]) -> dns.zone.Zone | None:
    served = [z for z in zones.values() if z.origin is not None and qname.is_subdomain(z.origin)]
    return max(served, key=lambda z: len(z.origin or ()), default=None)


def _delegation(zone: dns.zone.Zone, qname: dns.name.Name, qtype: int) -> dns.name.Name | None:
    """The highest zone cut at or above ``qname`` (DS at the cut is answered by the parent)."""
    origin = zone.origin
    assert origin is not None
    for depth in range(len(origin) + 1, len(qname) + 1):
        name = qname.split(depth)[1]
        if name == qname and qtype == dns.rdatatype.DS:
            return None
        if zone.get_rdataset(name, dns.rdatatype.NS) is not None:
            return name
    return None


def _scenario_delegation(
    zone: dns.zone.Zone, qname: dns.name.Name, scenario: Scenario | None
) -> Delegation | None:
    """The delegation of the scenario's domain at or above ``qname``, if it is delegated."""
    if scenario is None:
        return None
    origin = zone.origin
    assert origin is not None
    depth = len(origin) + 1
    if len(qname) < depth:
        return None
    domain = scenario.domain(qname.split(depth)[1].to_text(omit_final_dot=True))
    if domain is None or not domain.delegated:
        return None
    return delegation(domain)


def _mail_hosts(
    qname: dns.name.Name, qtype: int, scenario: Scenario | None
) -> dns.rrset.RRset | None:
    """The MX records of a delegated scenario domain that lists mail hosts."""
    if qtype != dns.rdatatype.MX or scenario is None:
        return None
    domain = scenario.domain(qname.to_text(omit_final_dot=True))
    if domain is None or not domain.delegated or not domain.mx:
        return None
    return mx_rrset(domain)


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


def _fault_for(scenario: Scenario, qname: dns.name.Name) -> DnsFault:
    """The fault of the scenario domain at or above ``qname``, if any."""
    labels = qname.to_text(omit_final_dot=True).lower().split(".")
    for start in range(len(labels) - 1):
        domain = scenario.domain(".".join(labels[start:]))
        if domain is not None:
            return domain.dns
    return "ok"


class BuiltinDnsServer:
    """UDP and TCP on the same loopback port, served from one daemon thread (+1 per TCP client)."""

    host = "127.0.0.1"

    def __init__(self, live: LiveScenario) -> None:
        self.live = live
        self.requests = RequestCounter()
        self._udp, self._tcp = bind_udp_tcp(self.host)
        self.port: int = self._udp.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.pacing = Pacing()
        self._delayed = ThreadPoolExecutor(max_workers=256, thread_name_prefix="world-dns-delay")

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._serve, name=f"world-dns:{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._clients_lock:
            for client in self._clients:
                _close(client)
        self._delayed.shutdown(wait=False, cancel_futures=True)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            sock.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in (self._udp, self._tcp, self._wake_r):
                selector.register(sock, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._udp:
                        self._serve_udp()
                    elif key.fileobj is self._tcp:
                        self._accept_tcp()

    def _serve_udp(self) -> None:
        try:
            wire, peer = self._udp.recvfrom(65535)
        except OSError:
            return
        if self.pacing.latency > 0:
            # Answer later from a pool, so one slow answer does not hold up the others.
            self._delayed.submit(self._answer_later, wire, peer)
            return
        reply = self._reply(wire, tcp=False)
        if reply is not None:
            self._udp.sendto(reply, peer)

    def _answer_later(self, wire: bytes, peer: Any) -> None:
        self.pacing.delay()
        reply = self._reply(wire, tcp=False)
        if reply is not None and not self._stopping.is_set():
            with contextlib.suppress(OSError):
                self._udp.sendto(reply, peer)

    def _accept_tcp(self) -> None:
        try:
            client, _ = self._tcp.accept()
        except OSError:
            return
        with self._clients_lock:
            self._clients.add(client)
        threading.Thread(target=self._serve_tcp, args=(client,), daemon=True).start()

    def _serve_tcp(self, client: socket.socket) -> None:
        client.settimeout(30)
        try:
            while not self._stopping.is_set():
                header = _recv_exactly(client, 2)
                wire = _recv_exactly(client, struct.unpack("!H", header)[0])
                reply = self._reply(wire, tcp=True)
                if reply is not None:
                    client.sendall(struct.pack("!H", len(reply)) + reply)
        except (OSError, EOFError):
            pass
        finally:
            with self._clients_lock:
                self._clients.discard(client)
            _close(client)

    def _reply(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """Wire reply to one query, or None for "no answer" (unparseable or a timeout fault)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        snapshot = self.live.current
        if query.question:
            qname = query.question[0].name
            self.requests.add(qname.to_text(omit_final_dot=True).lower())
            fault = _fault_for(snapshot.scenario, qname)
        else:
            fault = "ok"
        if fault == "timeout":
            return None
        if not self.pacing.admit():  # a rate-limited server refuses, as real ones do (RRL)
            refused = dns.message.make_response(query)
            refused.set_rcode(dns.rcode.REFUSED)
            return refused.to_wire()
        if fault == "garbage":
            return os.urandom(7)  # shorter than a DNS header, so never parses
        if fault == "servfail":
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        elif fault == "lie":  # NXDOMAIN with the real zone's SOA, as if the name were gone
            response = answer(query, snapshot.apex_zones)
        else:
            response = answer(query, snapshot.apex_zones, snapshot.scenario)
        limit = 65535 if tcp else max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:  # a truncated, empty reply tells the client to use TCP
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | (response.flags & dns.flags.AA)
            return truncated.to_wire()


def bind_udp_tcp(host: str) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same OS-chosen port (retried if TCP's is taken)."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        return udp, tcp
    raise OSError("no free port for both UDP and TCP on loopback")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
