"""Make the world behave like a real service under load: a fixed added latency per
request and an enforced rate limit (what the benchmark measures against), and the
"patchwork" world: many RDAP and WHOIS servers, each with its own unannounced quota."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lapsewatch.world.rdap_server import RdapServer
    from lapsewatch.world.scenario import Scenario
    from lapsewatch.world.whois_server import WorldWhoisServer

__all__ = ["PATCHWORK", "Pacing", "Patchwork", "Registry"]


class Pacing:
    """A token bucket of ``rate`` requests per second (burst: one second's worth)
    and ``latency`` seconds added to every answer. Thread-safe; counts refusals."""

    def __init__(self, *, latency: float = 0.0, rate: float | None = None) -> None:
        self.latency = latency
        self.rate = rate
        self.refused = 0
        self.admitted = 0
        self._tokens = rate or 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._first: float | None = None
        self.timeline: list[list[int]] = []
        """``[admitted, refused]`` per second from the first request (where a bench's
        cycle lost its server's quota: a slow start, a refusal's pause, a tail)."""

    def _record(self, now: float, *, admitted: bool) -> bool:
        """Count one request, in all and in its second; ``admitted`` back."""
        if admitted:
            self.admitted += 1
        else:
            self.refused += 1
        if self._first is None:
            self._first = now
        second = int(now - self._first)
        while len(self.timeline) <= second:
            self.timeline.append([0, 0])
        self.timeline[second][0 if admitted else 1] += 1
        return admitted

    def admit(self) -> bool:
        """Whether one more request fits under the rate limit now."""
        with self._lock:
            now = time.monotonic()
            if self.rate is None:
                return self._record(now, admitted=True)
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return self._record(now, admitted=True)
            return self._record(now, admitted=False)

    def counts(self) -> dict[str, Any]:
        """Requests admitted and refused, in all and per second (``timeline``)."""
        return {"admitted": self.admitted, "refused": self.refused, "timeline": self.timeline}

    def delay(self) -> None:
        if self.latency > 0:
            time.sleep(self.latency)


@dataclass(frozen=True)
class Registry:
    """One registry server of the patchwork world: the TLDs it serves and their share of
    the custom domains, its quota (requests/s, unannounced: a 429 or, on WHOIS, a
    rate-limit text above it), its latency and its protocol (RDAP, or WHOIS only)."""

    name: str
    tlds: tuple[tuple[str, float], ...]
    """``(tld, share of all custom domains)``."""
    quota: float
    latency: float
    protocol: Literal["rdap", "whois"] = "rdap"


PATCHWORK: tuple[Registry, ...] = (
    # A large .com/.net registry holds about half of the domains; it sets the pace.
    Registry("verisign", (("com", 0.42), ("net", 0.08)), quota=100, latency=0.06),
    Registry("pir", (("org", 0.12),), quota=40, latency=0.08),
    Registry("identity", (("io", 0.06), ("info", 0.02)), quota=30, latency=0.12),
    Registry("google", (("dev", 0.03), ("app", 0.01)), quota=300, latency=0.02),
    Registry("centralnic", (("xyz", 0.02), ("online", 0.01)), quota=200, latency=0.04),
    Registry("denic", (("de", 0.05),), quota=20, latency=0.15),
    Registry("nominet", (("uk", 0.03),), quota=15, latency=0.2),
    Registry("sidn", (("nl", 0.025),), quota=10, latency=0.1),
    Registry("us", (("us", 0.025),), quota=50, latency=0.05),
    Registry("cira", (("ca", 0.02),), quota=12, latency=0.12),
    Registry("afnic", (("fr", 0.02),), quota=8, latency=0.25),
    Registry("switch", (("ch", 0.01),), quota=5, latency=0.4),
    Registry("punktum", (("dk", 0.01),), quota=6, latency=0.3),
    Registry("ai", (("ai", 0.01),), quota=5, latency=0.35),
    # ccTLD registries without RDAP: their WHOIS servers, slow and strict.
    Registry("jprs", (("jp", 0.01),), quota=4, latency=0.3, protocol="whois"),
    Registry("tcinet", (("ru", 0.01),), quota=5, latency=0.25, protocol="whois"),
    Registry("nic-it", (("it", 0.01),), quota=6, latency=0.2, protocol="whois"),
)
"""Shares add up to 1; every registry but the first needs at most 60% of the first's
time at its quota (share / quota), so a cycle paced well is as long as the first's."""


class Patchwork:
    """One server per :class:`Registry` (RDAP or WHOIS), each with its own
    :class:`Pacing`; a bootstrap file pointing each RDAP TLD at its registry's server,
    and a WHOIS server table for the others (``LAPSEWATCH_WHOIS_SERVERS``)."""

    def __init__(
        self,
        scenario: Scenario,
        directory: Path,
        registries: tuple[Registry, ...] = PATCHWORK,
        hang_seconds: float = 6.0,
    ) -> None:
        from lapsewatch.world.live import LiveScenario
        from lapsewatch.world.rdap_server import RdapServer
        from lapsewatch.world.whois_server import WorldWhoisServer

        self.registries = registries
        self.bootstrap_path = directory / "patchwork-dns.json"
        self.whois_servers_path = directory / "patchwork-whois.json"
        live = LiveScenario(scenario)
        self.servers: dict[str, RdapServer | WorldWhoisServer] = {}
        for registry in registries:
            server: RdapServer | WorldWhoisServer
            if registry.protocol == "whois":
                server = WorldWhoisServer(live, hang_seconds=hang_seconds)
            else:
                server = RdapServer(live, hang_seconds)
            server.pacing = Pacing(latency=registry.latency, rate=registry.quota)
            self.servers[registry.name] = server

    def start(self) -> None:
        from lapsewatch.world import WHOIS_WORDING
        from lapsewatch.world.rdap_server import RdapServer, tld_base_url

        for server in self.servers.values():
            server.start()
        # Each TLD's own base URL, as IANA's file lists them; WHOIS TLDs are not in it.
        services = []
        whois: dict[str, dict[str, str]] = {}
        for registry in self.registries:
            server = self.servers[registry.name]
            for tld, _ in registry.tlds:
                if isinstance(server, RdapServer):
                    services.append([[tld], [tld_base_url(server.url, tld)]])
                else:
                    whois[tld] = {"server": server.address, "like": WHOIS_WORDING}
        document = {"version": "1.0", "description": "lapsewatch patchwork world"}
        self.bootstrap_path.write_text(json.dumps({**document, "services": services}, indent=1))
        self.whois_servers_path.write_text(json.dumps(whois, indent=1))

    def env(self) -> dict[str, str]:
        """Where the sources find this world's RDAP and WHOIS servers."""
        return {
            "LAPSEWATCH_RDAP_BOOTSTRAP_URL": str(self.bootstrap_path),
            "LAPSEWATCH_WHOIS_SERVERS": str(self.whois_servers_path),
        }

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per registry: its protocol, quota, latency, and requests admitted and refused."""
        stats: dict[str, dict[str, Any]] = {}
        for r in self.registries:
            pacing = self.servers[r.name].pacing
            assert pacing is not None
            stats[r.name] = {
                "protocol": r.protocol,
                "quota": r.quota,
                "latency": r.latency,
                **pacing.counts(),
            }
        return stats


def tld_weights(registries: tuple[Registry, ...] = PATCHWORK) -> tuple[tuple[str, float], ...]:
    """``(tld, share)`` of every TLD of ``registries``."""
    return tuple(pair for registry in registries for pair in registry.tlds)
