"""WHOIS (RFC 3912, TCP port 43): the registry's record where it has no RDAP.

Many ccTLD registries (.ru, .jp, .it, .eu, …) answer only on port 43, in free
text. :func:`query_whois` is a small asyncio client (connect timeout, a total
deadline, bounded retries on network failures, a cap on the answer's size);
:class:`WhoisSource` turns an answer into the same :class:`Observation` RDAP
gives, through :mod:`lapsewatch.sources.whois_text`. Doubt is an error: a
timeout, a refused connection, an empty, huge or unreadable answer and every
rate-limit text give an ``error`` observation, never "not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from lapsewatch.config import Settings
from lapsewatch.sources._http import FetchError
from lapsewatch.sources.bootstrap import Bootstrap, BootstrapError
from lapsewatch.sources.interface import Observation, Outcome, Source, truncate
from lapsewatch.sources.rdap import RdapSource
from lapsewatch.sources.whois_servers import (
    WhoisServer,
    WhoisServerError,
    WhoisServers,
    load_whois_servers,
)
from lapsewatch.sources.whois_text import decode, parse_answer

__all__ = [
    "DEFAULT_MAX_BYTES",
    "QUERY_FORMATS",
    "WhoisQueryError",
    "WhoisSource",
    "format_query",
    "query_whois",
]

DEFAULT_MAX_BYTES = 256 * 1024
"""Largest answer read; real records are a few KiB, the longest banners ~10 KiB."""
MAX_RETRY_AFTER = 3600.0

QUERY_FORMATS: Mapping[str, str] = {
    "jp": "{domain}/e",  # JPRS: English labels instead of Japanese ones
    "de": "-T dn,ace {domain}",  # DENIC: the domain record, not the handles
    "com": "domain {domain}",  # Verisign: the domain, not name servers of that name
    "net": "domain {domain}",
}
"""The query line a registry needs, by TLD; every other server gets the bare domain."""

Limiter = Callable[[WhoisServer], AbstractAsyncContextManager[Any]]
"""Optional per-server rate limit: entered around every connection to ``server``."""


class WhoisQueryError(Exception):
    """The server could not be asked or gave no usable bytes; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def format_query(domain: str) -> str:
    tld = domain.rsplit(".", 1)[-1].lower()
    return QUERY_FORMATS.get(tld, "{domain}").format(domain=domain)


async def _ask_once(server: WhoisServer, query: str, timeout: float, max_bytes: int) -> bytes:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(query.encode("ascii") + b"\r\n")
            await writer.drain()
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise WhoisQueryError(f"answer larger than {max_bytes // 1024} KiB")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


async def query_whois(
    server: WhoisServer,
    query: str,
    *,
    timeout: float = 5.0,
    deadline: float | None = None,
    attempts: int = 2,
    max_bytes: int = DEFAULT_MAX_BYTES,
    pause: float = 0.5,
    before_attempt: Callable[[], Any] | None = None,
    on_timeout: Callable[[], Any] | None = None,
    limiter: Limiter | None = None,
) -> bytes:
    """The raw answer of ``server`` to one query line; raises :class:`WhoisQueryError`.

    ``timeout`` bounds each attempt (connect, send, read to the end), ``deadline``
    all of them with the pauses between (not the waits in ``before_attempt``); only
    network failures and timeouts are
    retried (a registry's text answer, even a rate-limit one, is never asked again).
    ``before_attempt`` is awaited before each attempt (a pacer's turn) and may raise
    to stop; ``on_timeout`` is told of each attempt that timed out.
    """
    if not query.isascii() or any(c in query for c in "\r\n\x00"):
        raise WhoisQueryError("query is not one ASCII line")
    total = deadline if deadline is not None else timeout * max(1, attempts) + pause * attempts
    tries = max(1, attempts)
    last = "no attempt"
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(total) as budget:
            for attempt in range(tries):
                if attempt:
                    await asyncio.sleep(pause * attempt)
                if before_attempt is not None:
                    # Waiting for our turn (a slow registry's queue) is not this query's
                    # time: the deadline stops while we wait (the domain's deadline still runs).
                    left = (budget.when() or loop.time()) - loop.time()
                    budget.reschedule(None)
                    waited = before_attempt()
                    if asyncio.iscoroutine(waited):
                        await waited
                    budget.reschedule(loop.time() + left)
                try:
                    if limiter is not None:
                        async with limiter(server):
                            return await _ask_once(server, query, timeout, max_bytes)
                    return await _ask_once(server, query, timeout, max_bytes)
                except TimeoutError:
                    last = f"no answer within {timeout:g} s"
                    if on_timeout is not None:
                        on_timeout()
                except ConnectionRefusedError:
                    last = "connection refused"
                except (ConnectionError, OSError) as exc:
                    last = f"network error: {type(exc).__name__}: {str(exc)[:120]}"
    except TimeoutError:
        last = f"no answer within the deadline of {total:g} s"
    note = f" after {tries} attempts" if tries > 1 and "deadline" not in last else ""
    raise WhoisQueryError(f"{last}{note}")


_WAIT = re.compile(
    r"(?:wait|go away for|at least)\s+(\d{1,9})[- ]?(?:s\b|sec|second)", re.IGNORECASE
)


def _retry_after(detail: str, text: str) -> float | None:
    """Seconds a rate-limit text asks us to wait ("Please go away for 13 Seconds")."""
    if not detail.startswith("rate limit"):
        return None
    match = _WAIT.search(text)
    if match is None:
        return None
    return min(float(match[1]), MAX_RETRY_AFTER)


class WhoisSource(Source):
    """Ask the registry's WHOIS server from the server table (port 43)."""

    name = "whois"
    paces_requests = True

    def __init__(
        self,
        *,
        servers: WhoisServers | None = None,
        servers_location: str | None = None,
        timeout: float = 5.0,
        attempts: int = 2,
        deadline: float | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        limiter: Limiter | None = None,
        retry_pause: float = 0.5,
        wordings: Mapping[str, str] | None = None,
        rdap: RdapSource | None = None,
    ) -> None:
        """``wordings`` maps a TLD to the real TLD whose registry's wording its server
        uses (a private or test registry speaking like ``ru``'s, say).

        ``rdap``: the RDAP source asked alongside; WHOIS is then asked only about
        domains whose TLD has no RDAP server in its bootstrap (:meth:`relevant`)."""
        self.rdap = rdap
        """The RDAP source asked alongside, if any (see :meth:`relevant`)."""
        self._no_bootstrap = False
        self._bootstrap_lock: asyncio.Lock | None = None
        self._bootstrap: Bootstrap | None = None
        """``rdap``'s bootstrap once loaded (it is loaded once and never changes)."""
        self._servers = servers
        self._location = servers_location
        self._timeout = timeout
        self._attempts = attempts
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._limiter = limiter
        self._pause = retry_pause
        self._wordings = dict(wordings or {})

    def servers(self) -> WhoisServers:
        """The server table, loaded once (raises :class:`WhoisServerError`)."""
        if self._servers is None:
            self._servers = load_whois_servers(self._location)
        return self._servers

    async def relevant(self, domain: str) -> bool:
        """Without an RDAP source beside it, every domain; with one, only domains whose
        TLD has no RDAP server (an unreadable bootstrap: none, RDAP reports it)."""
        if self.rdap is None:
            return True
        if self._bootstrap is not None:  # every domain asks: no lock once it is loaded
            return not self._bootstrap.base_urls(domain.lower().rstrip("."))
        if self._bootstrap_lock is None:
            self._bootstrap_lock = asyncio.Lock()
        async with self._bootstrap_lock:  # one try at a time, and a failure remembered:
            if self._no_bootstrap:  # asking again for every domain would wait each time
                return False
            try:
                bootstrap = await self.rdap.bootstrap()
            except BootstrapError:
                self._no_bootstrap = True
                return False
            self._bootstrap = bootstrap
        return not bootstrap.base_urls(domain.lower().rstrip("."))

    async def observe(self, domain: str) -> Observation:
        domain = domain.lower().rstrip(".")
        try:
            table = self.servers()
        except WhoisServerError as exc:
            return Observation.error(self.name, domain, f"no WHOIS server table: {exc}")
        server = table.server_for(domain)
        if server is None:
            tld = domain.rsplit(".", 1)[-1]
            return Observation.skipped(
                self.name, domain, f"no WHOIS server for .{tld} in the table ({table.origin})"
            )
        pacer = self.pacer
        try:
            raw = await query_whois(
                server,
                format_query(domain),
                timeout=self._timeout,
                deadline=self._deadline,
                attempts=self._attempts,
                max_bytes=self._max_bytes,
                pause=self._pause,
                before_attempt=(
                    (lambda: pacer.request(f"{server.host}:{server.port}"))
                    if pacer is not None
                    else None
                ),
                on_timeout=(
                    (lambda: pacer.timed_out(f"{server.host}:{server.port}"))
                    if pacer is not None
                    else None
                ),
                limiter=self._limiter,
            )
        except WhoisQueryError as exc:
            return Observation.error(self.name, domain, f"{exc.reason} ({server})")
        except FetchError as exc:  # the pacer would not send it (a slow or pausing server)
            return Observation.error(self.name, domain, f"not sent: {exc} ({server})")
        return self.interpret(domain, raw, server, wording=table.wording_for(domain))

    def interpret(
        self, domain: str, raw: bytes, server: WhoisServer | str, *, wording: str | None = None
    ) -> Observation:
        """Turn raw answer bytes into an observation (public for tests and tools)."""
        tld = domain.rsplit(".", 1)[-1]
        text = decode(raw, tld)
        evidence = truncate(f"WHOIS {server} {format_query(domain)}\n{text}")
        answer = parse_answer(text, domain, wording=self._wordings.get(tld.lower()) or wording)
        if answer.kind == "error":
            wait = _retry_after(answer.detail, text)
            limited = wait is not None or answer.detail.startswith("rate limit")
            if limited and self.pacer is not None:
                where = server if isinstance(server, str) else f"{server.host}:{server.port}"
                self.pacer.refused(wait, where)
            return Observation.error(
                self.name,
                domain,
                f"{answer.detail} ({server})",
                evidence=evidence,
                retry_after=wait,
            )
        if answer.kind == "not_found":
            return Observation(
                source=self.name,
                domain=domain,
                outcome=Outcome.ANSWERED,
                detail=f"{answer.detail} ({server})",
                found=False,
                evidence=evidence,
            )
        return Observation(
            source=self.name,
            domain=domain,
            outcome=Outcome.ANSWERED,
            detail=f"{answer.detail} ({server})",
            found=True,
            status=answer.status,
            registered_at=answer.created,
            expires_at=answer.expires,
            last_changed_at=answer.changed,
            nameservers=answer.nameservers,
            evidence=evidence,
        )


def from_settings(settings: Settings, client: object, built: Mapping[str, Source]) -> WhoisSource:
    """The catalog's factory (:mod:`lapsewatch.source_catalog`): asked only for TLDs
    without an RDAP server when the RDAP source is ``built`` too."""
    rdap = built.get("rdap")
    return WhoisSource(
        servers_location=settings.whois_servers,
        timeout=settings.timeout,
        attempts=min(settings.attempts, 2),
        deadline=settings.timeout * 2 + 1,
        rdap=rdap if isinstance(rdap, RdapSource) else None,
    )
