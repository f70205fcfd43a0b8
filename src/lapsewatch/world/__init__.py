"""A local world: fake-but-realistic RDAP, DNS, WHOIS and Fastly servers on loopback, from one
scenario.

Tests and ``lapsewatch demo`` run every source against it instead of the internet::

    with World(demo_scenario(), hang_seconds=0.5) as world:
        settings = Settings.from_env(world.env())
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar

from lapsewatch.world.dns_server import BuiltinDnsServer
from lapsewatch.world.fastly_server import FastlyServer
from lapsewatch.world.http_base import gzip_bomb
from lapsewatch.world.live import LiveScenario, RequestCounter, Snapshot
from lapsewatch.world.nsd import NsdError, NsdServer, nsd_available
from lapsewatch.world.pacing import Pacing
from lapsewatch.world.rdap_server import RdapServer, bootstrap_document
from lapsewatch.world.scenario import (
    DomainScenario,
    Scenario,
    ScenarioError,
    demo_scenario,
    load_scenario,
    parse_scenario,
)
from lapsewatch.world.whois_server import WorldWhoisServer

__all__ = [
    "DnsBackend",
    "DomainScenario",
    "NsdError",
    "RequestCounter",
    "Scenario",
    "ScenarioError",
    "World",
    "demo_scenario",
    "load_scenario",
    "nsd_available",
    "parse_scenario",
]

DnsBackend = Literal["builtin", "nsd"]
_T = TypeVar("_T")


class _DnsServer(Protocol):
    port: int
    requests: RequestCounter

    def start(self) -> None: ...
    def stop(self) -> None: ...


WHOIS_WORDING = "com"
"""The world's WHOIS server answers in Verisign's (.com) wording; its table says so."""


class World:
    """Starts the servers for a scenario; stop() (or leaving ``with``) ends them all."""

    dns_host = "127.0.0.1"

    def __init__(
        self,
        scenario: Scenario | str | os.PathLike[str],
        *,
        dns: DnsBackend = "builtin",
        hang_seconds: float = 10.0,
        fastly_key: str = "world-key",
        latency: float = 0.0,
        rate_limit: float | None = None,
        trickle_seconds: float = 1.0,
    ) -> None:
        """``latency`` seconds are added to every answer and each server (RDAP, DNS,
        Fastly, WHOIS) admits at most ``rate_limit`` requests a second (429, REFUSED or
        a WHOIS rate-limit text above);
        a ``trickle`` fault sends a byte every ``trickle_seconds``."""
        if not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario)
        if dns not in ("builtin", "nsd"):
            raise ValueError(f"dns must be 'builtin' or 'nsd', not {dns!r}")
        self.dns_backend: DnsBackend = dns
        self.fastly_key = fastly_key
        self._hang_seconds = hang_seconds
        self._flaky = 0.0
        self.latency = latency
        self.rate_limit = rate_limit
        self.trickle_seconds = trickle_seconds
        self._live = LiveScenario(scenario)
        self._dir: Path | None = None
        self._rdap: RdapServer | None = None
        self._fastly: FastlyServer | None = None
        self._dns: _DnsServer | None = None
        self._whois: WorldWhoisServer | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> Self:
        if self._dir is not None:
            raise RuntimeError("this world is already running")
        self._dir = Path(tempfile.mkdtemp(prefix="lapsewatch-world-"))
        try:
            self._rdap = RdapServer(self._live, self._hang_seconds)
            self._fastly = FastlyServer(self._live, self._hang_seconds, self.fastly_key)
            self._rdap.flaky = self._fastly.flaky = self._flaky
            self._rdap.trickle_seconds = self._fastly.trickle_seconds = self.trickle_seconds
            self._dns = (
                NsdServer(self._live) if self.dns_backend == "nsd" else BuiltinDnsServer(self._live)
            )
            for paced in (self._rdap, self._fastly, self._dns):
                if isinstance(paced, RdapServer | FastlyServer | BuiltinDnsServer):
                    paced.pacing = Pacing(latency=self.latency, rate=self.rate_limit)
            self._whois = WorldWhoisServer(self._live, hang_seconds=self._hang_seconds)
            self._whois.pacing = Pacing(latency=self.latency, rate=self.rate_limit)
            self._write_bootstrap(self._live.current)
            self._live.subscribe(self._write_bootstrap)
            if any(_bombs(d) for d in self._live.current.scenario.domains.values()):
                gzip_bomb()  # seconds of CPU: made before the first request, not during it
            for server in (self._rdap, self._fastly, self._dns):
                server.start()
            self._whois.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Idempotent; in-flight 'timeout' requests are cut, not waited for."""
        for server in (self._rdap, self._fastly, self._dns, self._whois):
            if server is not None:
                server.stop()
        self._rdap = self._fastly = self._dns = None
        self._whois = None
        self._live.unsubscribe(self._write_bootstrap)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where things are --------------------------------------------------------------------

    @property
    def rdap_url(self) -> str:
        """Base URL of the RDAP server (each TLD lives under ``/rdap/{tld}/``)."""
        return _running(self._rdap).url

    @property
    def bootstrap_url(self) -> str:
        return _running(self._rdap).bootstrap_url

    @property
    def bootstrap_path(self) -> Path:
        """The same bootstrap document as a file, rewritten when a domain changes."""
        return _running(self._dir) / "dns.json"

    @property
    def dns_port(self) -> int:
        return _running(self._dns).port

    @property
    def fastly_url(self) -> str:
        return _running(self._fastly).url

    @property
    def whois_address(self) -> str:
        """``127.0.0.1:port`` of the registry WHOIS server of the TLDs without RDAP."""
        return _running(self._whois).address

    @property
    def whois_servers_path(self) -> Path:
        """The WHOIS server table (``LAPSEWATCH_WHOIS_SERVERS``): every TLD of
        ``scenario.whois_tlds`` → this world's WHOIS server; rewritten on change."""
        return _running(self._dir) / "whois-servers.json"

    @property
    def scenario(self) -> Scenario:
        """The current scenario, including changes made with set_domain/remove_domain."""
        return self._live.current.scenario

    def env(self) -> dict[str, str]:
        """``LAPSEWATCH_*`` variables that point every source at this world."""
        return {
            "LAPSEWATCH_RDAP_BOOTSTRAP_URL": self.bootstrap_url,
            "LAPSEWATCH_DNS_NAMESERVERS": f"{self.dns_host}:{self.dns_port}",
            "LAPSEWATCH_FASTLY_URL": self.fastly_url,
            "LAPSEWATCH_FASTLY_KEY": self.fastly_key,
            "LAPSEWATCH_WHOIS_SERVERS": str(self.whois_servers_path),
            "LAPSEWATCH_SOURCES": "rdap,dns,whois,fastly",
        }

    # -- observing and changing ----------------------------------------------------------------

    @property
    def rdap_requests(self) -> RequestCounter:
        """Keyed by domain name; bootstrap fetches under ``/bootstrap/dns.json``."""
        return _running(self._rdap).requests

    @property
    def dns_requests(self) -> RequestCounter:
        """Keyed by query name; always empty with NSD, which cannot tell us."""
        return _running(self._dns).requests

    @property
    def whois_requests(self) -> RequestCounter:
        """Keyed by the asked domain."""
        return _running(self._whois).requests

    @property
    def fastly_requests(self) -> RequestCounter:
        """Keyed by the ``domain`` parameter."""
        return _running(self._fastly).requests

    def pacing_stats(self) -> dict[str, dict[str, Any]]:
        """Requests admitted and refused (over the rate limit) per server, and per second
        (``timeline``)."""
        stats: dict[str, dict[str, Any]] = {}
        servers = (
            ("rdap", self._rdap),
            ("fastly", self._fastly),
            ("dns", self._dns),
            ("whois", self._whois),
        )
        for name, server in servers:
            pacing = getattr(server, "pacing", None)
            if isinstance(pacing, Pacing):
                stats[name] = pacing.counts()
        return stats

    @property
    def flaky(self) -> float:
        """Fraction of RDAP and Fastly answers replaced by a random 500, 429 or timeout."""
        return self._flaky

    @flaky.setter
    def flaky(self, value: float) -> None:
        self._flaky = value
        for server in (self._rdap, self._fastly):
            if server is not None:
                server.flaky = value

    @property
    def hang_seconds(self) -> float:
        """How long a 'timeout' fault holds an HTTP request before answering."""
        return self._hang_seconds

    @hang_seconds.setter
    def hang_seconds(self, value: float) -> None:
        self._hang_seconds = value
        for server in (self._rdap, self._fastly):
            if server is not None:
                server.hang_seconds = value
        if self._whois is not None:
            self._whois.hang_seconds = value

    def set_domain(self, domain: DomainScenario) -> None:
        """Add or replace a domain; all servers (NSD too, by reload) answer the new state."""
        if _bombs(domain):
            gzip_bomb()
        self._live.set_domain(domain)

    def remove_domain(self, name: str) -> None:
        """Forget a domain: it then reads as never registered."""
        self._live.remove_domain(name)

    # -- internals -----------------------------------------------------------------------------

    def _write_bootstrap(self, snapshot: Snapshot) -> None:
        if self._dir is None or self._rdap is None:
            return
        path = self._dir / "dns.json"
        document = bootstrap_document(snapshot.scenario, self._rdap.url)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(document, indent=1))
        partial.replace(path)
        if self._whois is not None:
            table = {
                tld: {"server": self._whois.address, "like": WHOIS_WORDING}
                for tld in snapshot.scenario.whois_tlds
            }
            path = self._dir / "whois-servers.json"
            partial = path.with_suffix(".tmp")
            partial.write_text(json.dumps(table, indent=1))
            partial.replace(path)


def _bombs(domain: DomainScenario) -> bool:
    """Whether ``domain``'s RDAP or Fastly answer is the gzip bomb.

    The bomb takes seconds of CPU to pack (more on a loaded machine), so a world makes
    it before its servers answer: otherwise the first request for it waits for the
    packing and a client's short timeout fires instead of its size cap."""
    return "gzip_bomb" in (domain.rdap, domain.fastly)


def _running(part: _T | None) -> _T:
    if part is None:
        raise RuntimeError("the world is not running; call start() or use 'with World(...)'")
    return part
