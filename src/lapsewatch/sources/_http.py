"""HTTP for the HTTP-speaking sources: bounded in time, size and retries.

A source's server may be hostile or broken. So every request here has

* a **total deadline** per request (connect, headers and body together): a
  server trickling a byte a second never restarts a clock;
* a **size cap** on the body, checked while streaming and again on the
  decompressed bytes (we decode gzip/deflate ourselves, a bounded amount at a
  time, so a gzip bomb never unpacks beyond the cap);
* **no redirect to another host**, and at most :data:`MAX_REDIRECTS` on the same one;
* a bounded retry of network errors, 429 and 5xx.

Every failure comes out as a :class:`FetchError` carrying its reason (a subclass
of ``httpx.TransportError``, so callers that catch those keep working).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import httpx

from lapsewatch.sources.interface import Pacer

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_REDIRECTS",
    "RETRY_STATUSES",
    "FetchError",
    "Reply",
    "RequestDeadline",
    "describe_transport_error",
    "get",
    "retry_after_seconds",
]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
"""Largest body (raw and decompressed) read from a source; an RDAP record is a few KB."""
MAX_REDIRECTS = 3
"""Redirects followed on the same host (scheme, host and port unchanged)."""
WAIT_INITIAL = 0.2
WAIT_MAX = 5.0
WAIT_JITTER = 1.0
"""The wait before retry *n* (from 1): ``WAIT_INITIAL * 2 ** (n - 1)`` plus up to
``WAIT_JITTER`` at random, at most ``WAIT_MAX`` seconds (a ``Retry-After`` replaces it)."""


class FetchError(httpx.TransportError):
    """A request that gave nothing usable; ``reason`` is one line for the evidence."""

    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestDeadline(FetchError):
    """The whole request (connect + headers + body) took longer than its deadline."""

    retryable = True


class _TooLarge(FetchError):
    pass


class _BadEncoding(FetchError):
    pass


class _BadRedirect(FetchError):
    pass


@dataclass(frozen=True)
class Reply:
    """A complete, size-checked, decoded answer."""

    status_code: int
    url: str
    headers: httpx.Headers
    content: bytes

    @property
    def text(self) -> str:
        """The body as text (charset from ``Content-Type``, UTF-8 by default), never raising."""
        charset = self.headers.get("content-type", "")
        encoding = "utf-8"
        for part in charset.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                encoding = value.strip('"')
        try:
            return self.content.decode(encoding, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


class _RetryableStatus(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(f"HTTP {reply.status_code}")
        self.reply = reply


def retry_after_seconds(response: httpx.Response | Reply) -> float | None:
    """``Retry-After`` as seconds (it may be a number or an HTTP date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def server_of(url: str) -> str:
    """The ``host:port`` a request to ``url`` goes to: what a per-server limit keys on."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


async def get(
    client: httpx.AsyncClient,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    attempts: int,
    max_retry_after: float,
    pacer: Pacer | None = None,
    deadline: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Reply:
    """GET, retrying network errors, timeouts, 429 and 5xx at most ``attempts`` times.

    ``deadline`` (default: the client's read timeout) bounds each attempt as a
    whole. A 429 waits what ``Retry-After`` asks when that is at most
    ``max_retry_after``; a longer wait is handed back to the caller (as the last
    reply) so the scheduler, not this request, does the waiting. A failure on
    the last attempt raises :class:`FetchError`; an HTTP error status on the last
    attempt is returned.

    Every request on the wire (retries and redirects too) waits for the ``pacer``
    first, and every 429 is reported to it: nothing gets around the rate limit.
    """
    limit = deadline if deadline is not None else (client.timeout.read or 30.0)

    def backoff(exc: Exception) -> bool | float:
        if isinstance(exc, FetchError):
            return exc.retryable
        if isinstance(exc, httpx.TransportError):
            return True
        if isinstance(exc, _RetryableStatus):
            wait = retry_after_seconds(exc.reply)
            if wait is None:
                return True
            return wait if wait <= max_retry_after else False
        return False

    async def attempt() -> Reply:
        reply = await _follow(client, url, params, headers, limit, max_bytes, pacer)
        if pacer is not None and reply.status_code == 429:
            pacer.refused(retry_after_seconds(reply), server_of(url))
        if reply.status_code in RETRY_STATUSES:
            raise _RetryableStatus(reply)
        return reply

    # A plain loop, not stamina: its retry context built about 50 objects in reference
    # cycles for every request, retried or not, which only the garbage collector frees
    # (measured in the bench: 10-15 MB held through a cycle, and their CPU).
    number = 1
    try:
        while True:
            try:
                return await attempt()
            except Exception as exc:
                wait = backoff(exc)
                if number >= attempts or wait is False:
                    raise
            # The wait is outside the handler: a cancellation during it (the domain's
            # deadline) carries no failed attempt as its context, and keeps no reply alive.
            if wait is True:
                jitter = random.uniform(0, WAIT_JITTER)  # spreads retries; not a secret
                wait = min(WAIT_MAX, WAIT_INITIAL * 2 ** (number - 1) + jitter)
            await asyncio.sleep(wait)
            number += 1
    except _RetryableStatus as exc:
        return exc.reply
    except httpx.TransportError:
        raise  # FetchError, or httpx's own (a caller may tell ConnectError apart)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FetchError(f"request failed: {type(exc).__name__}: {exc}") from exc


async def _follow(
    client: httpx.AsyncClient,
    url: str,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
    deadline: float,
    max_bytes: int,
    pacer: Pacer | None,
) -> Reply:
    """One request, following at most :data:`MAX_REDIRECTS` redirects on the same origin."""
    current = str(httpx.URL(url, params=params)) if params else url
    origin = _origin(current)
    for _hop in range(MAX_REDIRECTS + 1):
        if pacer is not None:
            await pacer.request(server_of(current))
        try:
            async with asyncio.timeout(deadline):
                reply, location = await _once(client, current, headers, max_bytes)
        except httpx.TimeoutException:
            if pacer is not None:
                pacer.timed_out(server_of(current))
            raise
        except TimeoutError:
            if pacer is not None:
                pacer.timed_out(server_of(current))
            raise RequestDeadline(
                f"no answer within {deadline:g} s (deadline for the whole request)"
            ) from None
        if location is None:
            return reply
        target = urljoin(current, location)
        if _origin(target) != origin:
            raise _BadRedirect(
                f"HTTP {reply.status_code} redirect to {_origin(target)[1][:80]!r}, "
                f"another host: not followed"
            )
        current = target
    raise _BadRedirect(f"more than {MAX_REDIRECTS} redirects (a loop?) from {origin[1]}")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


async def _once(
    client: httpx.AsyncClient, url: str, headers: Mapping[str, str] | None, max_bytes: int
) -> tuple[Reply, str | None]:
    async with client.stream("GET", url, headers=headers) as response:
        location = response.headers.get("location")
        if response.is_redirect and location:
            return Reply(response.status_code, url, response.headers, b""), location
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > max_bytes:
            raise _TooLarge(f"answer of {int(declared)} bytes refused (limit {max_bytes})")
        decoder = _Decoder(response.headers.get("content-encoding", ""), max_bytes)
        raw = 0
        async for chunk in _raw_chunks(response):
            raw += len(chunk)
            if raw > max_bytes:
                raise _TooLarge(f"answer longer than {max_bytes} bytes: cut off")
            decoder.feed(chunk)
        return Reply(response.status_code, url, response.headers, decoder.finish()), None


async def _raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it came off the wire, chunk by chunk (or whole, when a transport such
    as httpx's mock already holds it in memory)."""
    if response.is_stream_consumed:
        yield response.content
        return
    async for chunk in response.aiter_raw():
        yield chunk


class _Decoder:
    """``Content-Encoding`` undone a bounded amount at a time (gzip, deflate, identity)."""

    def __init__(self, encoding: str, max_bytes: int) -> None:
        codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise _BadEncoding(f"unsupported Content-Encoding {encoding[:40]!r}")
        self._coding = codings[0] if codings else None
        self._zlib = (
            zlib.decompressobj(zlib.MAX_WBITS | 16)
            if self._coding in ("gzip", "x-gzip")
            else zlib.decompressobj()
        )
        self._raw_deflate = False
        self._max = max_bytes
        self._out = bytearray()
        self._fed = False

    def feed(self, data: bytes) -> None:
        self._fed = self._fed or bool(data)
        if self._coding is None:
            self._out += data
        else:
            self._inflate(data)
        if len(self._out) > self._max:
            raise _TooLarge(f"answer longer than {self._max} bytes: cut off")

    def _inflate(self, data: bytes) -> None:
        room = self._max - len(self._out) + 1
        try:
            chunk = self._zlib.decompress(data, room)
        except zlib.error as exc:
            if self._coding == "deflate" and not self._out and not self._raw_deflate:
                # Some servers send raw deflate without the zlib wrapper (httpx does the same).
                self._raw_deflate = True
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                self._inflate(data)
                return
            raise _BadEncoding(f"body labelled {self._coding} does not decode ({exc})") from None
        self._out += chunk
        if self._zlib.unconsumed_tail:
            raise _TooLarge(f"answer unpacks to more than {self._max} bytes: refused")

    def finish(self) -> bytes:
        if self._coding is not None and self._fed and not self._zlib.eof:
            raise _BadEncoding(f"body labelled {self._coding} is cut short")
        return bytes(self._out)


def describe_transport_error(exc: httpx.TransportError, timeout: float) -> str:
    """One line for a failed request, without a stack trace."""
    if isinstance(exc, FetchError):
        return exc.reason
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s ({type(exc).__name__})"
    return f"request failed: {type(exc).__name__}: {exc}".rstrip(": ")
