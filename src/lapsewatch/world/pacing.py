"""Make the world behave like a real service under load: a fixed added latency per
request and an enforced rate limit (what the benchmark measures against), and the
"patchwork" world: many RDAP servers, each with its own unannounced quota."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lapsewatch.world.rdap_server import RdapServer
    from lapsewatch.world.scenario import Scenario

__all__ = ["PATCHWORK", "Pacing", "PatchworkRdap", "Registry"]


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

    def admit(self) -> bool:
        """Whether one more request fits under the rate limit now."""
        with self._lock:
            if self.rate is None:
                self.admitted += 1
                return True
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self.admitted += 1
                return True
            self.refused += 1
            return False

    def delay(self) -> None:
        if self.latency > 0:
            time.sleep(self.latency)


@dataclass(frozen=True)
class Registry:
    """One RDAP server of the patchwork world: the TLDs it serves and their share of the
    custom domains, its quota (requests/s, unannounced: 429 above it) and its latency."""

    name: str
    tlds: tuple[tuple[str, float], ...]
    """``(tld, share of all custom domains)``."""
    quota: float
    latency: float


PATCHWORK: tuple[Registry, ...] = (
    # A large .com/.net registry holds about half of the domains; it sets the pace.
    Registry("verisign", (("com", 0.42), ("net", 0.08)), quota=100, latency=0.06),
    Registry("pir", (("org", 0.12),), quota=40, latency=0.08),
    Registry("identity", (("io", 0.06), ("info", 0.02)), quota=30, latency=0.12),
    Registry("google", (("dev", 0.04), ("app", 0.02)), quota=300, latency=0.02),
    Registry("centralnic", (("xyz", 0.03), ("online", 0.01)), quota=200, latency=0.04),
    Registry("denic", (("de", 0.05),), quota=20, latency=0.15),
    Registry("nominet", (("uk", 0.03),), quota=15, latency=0.2),
    Registry("sidn", (("nl", 0.025),), quota=10, latency=0.1),
    Registry("us", (("us", 0.025),), quota=50, latency=0.05),
    Registry("cira", (("ca", 0.02),), quota=12, latency=0.12),
    Registry("afnic", (("fr", 0.02),), quota=8, latency=0.25),
    Registry("switch", (("ch", 0.01),), quota=5, latency=0.4),
    Registry("punktum", (("dk", 0.01),), quota=6, latency=0.3),
    Registry("ai", (("ai", 0.01),), quota=5, latency=0.35),
)
"""Shares add up to 1; every registry but the first needs at most 60% of the first's
time at its quota (share / quota), so a cycle paced well is as long as the first's."""


class PatchworkRdap:
    """One RDAP server per :class:`Registry`, each with its own :class:`Pacing`, and a
    bootstrap file pointing each TLD at its registry's server."""

    def __init__(
        self,
        scenario: Scenario,
        directory: Path,
        registries: tuple[Registry, ...] = PATCHWORK,
        hang_seconds: float = 6.0,
    ) -> None:
        from lapsewatch.world.live import LiveScenario
        from lapsewatch.world.rdap_server import RdapServer

        self.registries = registries
        self.bootstrap_path = directory / "patchwork-dns.json"
        live = LiveScenario(scenario)
        self.servers: dict[str, RdapServer] = {}
        for registry in registries:
            server = RdapServer(live, hang_seconds)
            server.pacing = Pacing(latency=registry.latency, rate=registry.quota)
            self.servers[registry.name] = server

    def start(self) -> None:
        from lapsewatch.world.rdap_server import tld_base_url

        for server in self.servers.values():
            server.start()
        # Each TLD's own base URL, as IANA's file lists them.
        document = {
            "version": "1.0",
            "description": "lapsewatch patchwork world",
            "services": [
                [[tld], [tld_base_url(self.servers[r.name].url, tld)]]
                for r in self.registries
                for tld, _ in r.tlds
            ],
        }
        self.bootstrap_path.write_text(json.dumps(document, indent=1))

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per registry: its quota, latency, and requests admitted and refused so far."""
        return {
            r.name: {
                "quota": r.quota,
                "latency": r.latency,
                "admitted": self.servers[r.name].pacing.admitted,
                "refused": self.servers[r.name].pacing.refused,
            }
            for r in self.registries
        }


def tld_weights(registries: tuple[Registry, ...] = PATCHWORK) -> tuple[tuple[str, float], ...]:
    """``(tld, share)`` of every TLD of ``registries``."""
    return tuple(pair for registry in registries for pair in registry.tlds)
