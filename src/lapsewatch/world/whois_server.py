"""A fake registry WHOIS server (RFC 3912, port 43) on loopback.

One threaded TCP server answers for every domain it is given: either a fixed
text (a real capture, say) or an answer it writes from a state
(``registered``, ``expiring``, ``redemption``, ``pending_delete``,
``available``) in the style of one of two real registries:

* ``"verisign"``: the ICANN-style record of .com/.net (``Registry Expiry Date:``,
  EPP status words with links, ``No match for "X".``);
* ``"tcinet"``: the RIPE-like record of .ru (``state:``, ``paid-till:``,
  ``No entries found for the selected source(s).``).

Each domain can also act out a fault instead: ``rate_limit`` (a registry's
rate-limit text), ``empty`` (connection closed after the query, no bytes),
``close`` (closed before reading the query), ``hang`` (no answer until the
server stops or ``hang_seconds`` pass), ``garbage`` (binary noise) and
``huge`` (an answer larger than any client should read). It only ever binds
127.0.0.1.

With a :class:`~lapsewatch.world.pacing.Pacing` (``pacing``) it acts like a busy
registry: a fixed latency per answer and an unannounced quota, above which it
answers with its rate-limit text, as real WHOIS servers do.
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from lapsewatch.world.live import LiveScenario, RequestCounter
from lapsewatch.world.pacing import Pacing
from lapsewatch.world.scenario import DomainScenario

__all__ = [
    "STATES",
    "LoopbackWhoisServer",
    "WhoisEntry",
    "WorldWhoisServer",
    "render_answer",
    "whois_entry",
]

WhoisState = Literal["registered", "expiring", "redemption", "pending_delete", "available"]
WhoisStyle = Literal["verisign", "tcinet"]
WhoisMode = Literal["ok", "rate_limit", "empty", "close", "hang", "garbage", "huge"]
STATES: tuple[str, ...] = ("registered", "expiring", "redemption", "pending_delete", "available")

# (registered, expires) in days from now, by state, as the RDAP world has them.
_DAYS: Mapping[str, tuple[int, int]] = {
    "registered": (-3650, 200),
    "expiring": (-3650, -3),
    "redemption": (-3650, -40),
    "pending_delete": (-3650, -70),
}
_EPP: Mapping[str, tuple[str, ...]] = {
    "registered": ("clientTransferProhibited",),
    "expiring": ("clientHold", "autoRenewPeriod"),
    "redemption": ("redemptionPeriod",),
    "pending_delete": ("pendingDelete",),
}
_TCINET_STATE: Mapping[str, str] = {
    "registered": "REGISTERED, DELEGATED, VERIFIED",
    # .ru has no redemption words: past "paid-till" the state only loses DELEGATED.
    "expiring": "REGISTERED, NOT DELEGATED, VERIFIED",
    "redemption": "REGISTERED, NOT DELEGATED, VERIFIED",
    "pending_delete": "REGISTERED, NOT DELEGATED, VERIFIED",
}
_RATE_LIMIT: Mapping[str, str] = {
    "verisign": "WHOIS LIMIT EXCEEDED - SEE WWW.PIR.ORG/WHOIS FOR DETAILS\r\n",
    "tcinet": "You have exceeded allowed connection rate.\r\nQuery rate limit exceeded\r\n",
}


@dataclass(frozen=True)
class WhoisEntry:
    """What the server says about one domain: a fixed ``text`` or one written from ``state``."""

    text: str | bytes | None = None
    state: WhoisState = "registered"
    style: WhoisStyle = "verisign"
    registered: datetime | None = None
    expires: datetime | None = None
    nameservers: tuple[str, ...] = ("ns1.example.net", "ns2.example.net")
    mode: WhoisMode = "ok"
    encoding: str = "utf-8"


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_answer(domain: str, entry: WhoisEntry, now: datetime | None = None) -> str:
    """A realistic answer for ``entry.state`` in ``entry.style`` (CRLF line ends)."""
    now = now or datetime.now(UTC)
    name = domain.lower()
    if entry.state == "available":
        if entry.style == "tcinet":
            body = [
                "% TCI Whois Service. Terms of use:",
                "% https://tcinet.ru/documents/whois_ru_rf.pdf (in Russian)",
                "",
                "No entries found for the selected source(s).",
                "",
                f">>> Last update of WHOIS database: {_stamp(now)} <<<",
            ]
        else:
            body = [
                f'No match for "{name.upper()}".',
                f">>> Last update of whois database: {_stamp(now)} <<<",
                "",
                "NOTICE: The expiration date displayed in this record is the date the",
                "registrar's sponsorship of the domain name registration in the registry is",
                "currently set to expire.",
            ]
        return "\r\n".join(body) + "\r\n"
    days = _DAYS[entry.state]
    registered = entry.registered or now + timedelta(days=days[0])
    expires = entry.expires or now + timedelta(days=days[1])
    if entry.style == "tcinet":
        lines = [
            "% TCI Whois Service. Terms of use:",
            "% https://tcinet.ru/documents/whois_ru_rf.pdf (in Russian)",
            "",
            f"domain:        {name.upper()}",
            *(f"nserver:       {ns}." for ns in entry.nameservers),
            f"state:         {_TCINET_STATE[entry.state]}",
            "org:           World Registrant LLC",
            "registrar:     WORLD-RU",
            "admin-contact: https://www.nic.ru/whois",
            f"created:       {_stamp(registered)}",
            f"paid-till:     {_stamp(expires)}",
            f"free-date:     {(expires + timedelta(days=32)).date().isoformat()}",
            "source:        TCI",
            "",
            f"Last updated on {_stamp(now)}",
        ]
    else:
        lines = [
            f"   Domain Name: {name.upper()}",
            "   Registry Domain ID: 2336799_DOMAIN_COM-VRSN",
            "   Registrar WHOIS Server: whois.world-registrar.example",
            f"   Updated Date: {_stamp(min(now, registered + timedelta(days=30)))}",
            f"   Creation Date: {_stamp(registered)}",
            f"   Registry Expiry Date: {_stamp(expires)}",
            "   Registrar: World Registrar, Inc.",
            "   Registrar IANA ID: 9999",
            *(
                f"   Domain Status: {word} https://icann.org/epp#{word}"
                for word in _EPP[entry.state]
            ),
            *(f"   Name Server: {ns.upper()}" for ns in entry.nameservers),
            "   DNSSEC: unsigned",
            f">>> Last update of whois database: {_stamp(now)} <<<",
        ]
    return "\r\n".join(lines) + "\r\n"


def _asked_domain(query: str) -> str:
    """The domain in a query line, whatever the registry's query format."""
    text = query.strip()
    for prefix in ("-T dn,ace ", "domain ", "="):
        text = text.removeprefix(prefix)
    return text.removesuffix("/e").strip().lower().rstrip(".")


class _Handler(socketserver.BaseRequestHandler):
    server: LoopbackWhoisServer

    def handle(self) -> None:
        connection: socket.socket = self.request
        connection.settimeout(10)
        server = self.server
        peek = server.entry_for_connection()
        if peek is not None and peek.mode == "close":
            return  # closed before reading the query
        data = b""
        with contextlib.suppress(OSError):
            while b"\n" not in data and len(data) < 4096:
                chunk = connection.recv(1024)
                if not chunk:
                    break
                data += chunk
        query = data.decode("utf-8", "replace")
        domain = _asked_domain(query)
        server.record(query.strip())
        pacing = server.pacing
        if pacing is not None and not pacing.admit():
            with contextlib.suppress(OSError):
                connection.sendall(_RATE_LIMIT[server.default_style].encode())
            return
        if pacing is not None:
            pacing.delay()
        entry = server.entry_for(domain)
        payload = server.answer(domain, entry)
        if payload is None:
            return
        with contextlib.suppress(OSError):
            connection.sendall(payload)


class LoopbackWhoisServer(socketserver.ThreadingTCPServer):
    """Serves :class:`WhoisEntry` answers on ``127.0.0.1:<free port>`` in daemon threads."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self,
        entries: Mapping[str, WhoisEntry] | None = None,
        *,
        default_style: WhoisStyle = "verisign",
        hang_seconds: float = 30.0,
        huge_bytes: int = 2 * 1024 * 1024,
        now: datetime | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.entries: dict[str, WhoisEntry] = {k.lower(): v for k, v in (entries or {}).items()}
        self.default_style: WhoisStyle = default_style
        self.hang_seconds = hang_seconds
        self.huge_bytes = huge_bytes
        self.now = now
        self.queries: list[str] = []
        self.pacing: Pacing | None = None
        """Latency and quota, when the server is to act busy (``None``: answers at once)."""
        self.connection_mode: WhoisMode | None = None
        """A fault applied to every connection before its query is read (``"close"``)."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def address(self) -> str:
        """``"127.0.0.1:port"``, as a server table names it."""
        return f"127.0.0.1:{self.port}"

    def record(self, query: str) -> None:
        with self._lock:
            self.queries.append(query)

    def entry_for(self, domain: str) -> WhoisEntry | None:
        """What to answer about ``domain`` (``None``: not registered)."""
        return self.entries.get(domain)

    def entry_for_connection(self) -> WhoisEntry | None:
        mode = self.connection_mode
        return WhoisEntry(mode=mode) if mode is not None else None

    def answer(self, domain: str, entry: WhoisEntry | None) -> bytes | None:
        """The bytes to send for ``domain``; None to close without a word."""
        if entry is None:
            entry = WhoisEntry(state="available", style=self.default_style)
        if entry.mode == "hang":
            self._stopping.wait(self.hang_seconds)
            return None
        if entry.mode in ("empty", "close"):
            return None
        if entry.mode == "rate_limit":
            return _RATE_LIMIT[entry.style].encode()
        if entry.mode == "garbage":
            noise = random.Random(domain).randbytes(2048)
            return b"\x00\xff" + noise
        if entry.mode == "huge":
            line = f"% {domain} padding line of a runaway answer ".ljust(99, "x") + "\n"
            return (line * (self.huge_bytes // len(line) + 1)).encode()
        if entry.text is not None:
            text = entry.text
            return text if isinstance(text, bytes) else text.encode(entry.encoding)
        return render_answer(domain, entry, self.now).encode(entry.encoding)

    def start(self) -> LoopbackWhoisServer:
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"whois:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, wake hanging handlers, close the socket."""
        self._stopping.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (its timeout) is expected here, not worth a traceback."""
        return

    def __enter__(self) -> LoopbackWhoisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_STATE_FOR_WHOIS: Mapping[str, WhoisState] = {
    "registered": "registered",
    "for_sale": "registered",  # a parked name is registered; its name servers say the rest
    "reregistered": "registered",
    "expiring": "expiring",
    "redemption": "redemption",
    "pending_delete": "pending_delete",
    "available": "available",
}


def whois_entry(domain: DomainScenario | None) -> WhoisEntry | None:
    """What a world's registry WHOIS server says about a scenario domain: its given
    ``whois`` text, its ``whois_fault``, or an answer written from its state."""
    if domain is None:
        return None
    if domain.whois_fault != "ok":
        return WhoisEntry(mode=domain.whois_fault)
    if domain.whois is not None:
        return WhoisEntry(text=domain.whois)
    state = _STATE_FOR_WHOIS[domain.state]
    if state == "available":
        return None
    return WhoisEntry(
        state=state,
        registered=domain.registered,
        expires=domain.expires,
        nameservers=domain.nameservers or ("ns1.example.net",),
    )


class WorldWhoisServer(LoopbackWhoisServer):
    """The world's registry WHOIS server: answers from the live scenario, counts queries
    per asked domain (``requests``)."""

    def __init__(self, live: LiveScenario, *, hang_seconds: float = 30.0) -> None:
        super().__init__(hang_seconds=hang_seconds)
        self.live = live
        self.requests = RequestCounter()

    def entry_for(self, domain: str) -> WhoisEntry | None:
        self.requests.add(domain)
        return whois_entry(self.live.current.scenario.domain(domain))
