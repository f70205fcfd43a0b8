"""The HTTP client the HTTP-speaking sources share.

httpx's API over aiohttp's connection pool (``httpx-aiohttp``): httpcore's own pool
spends time linear in its number of connections on every request (measured here:
0.8 ms of CPU a request with 10 connections, 2.6 ms with 100), while a cycle keeps
dozens busy per source; aiohttp's costs about 0.25 ms whatever the pool size.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from lapsewatch.tls import client_context

__all__ = ["open_client"]


@asynccontextmanager
async def open_client(
    *, timeout: float, max_connections: int, user_agent: str
) -> AsyncIterator[httpx.AsyncClient]:
    """A client with keep-alive connections to each server, closed afterwards.

    Behind an HTTP proxy (``HTTP_PROXY`` and friends) httpx's own transport is
    used, since it is the one that honours them.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    transport = (
        None
        if urllib.request.getproxies()
        else _Transport(verify=client_context("aiohttp"), limits=limits)
    )
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        # Redirects are followed by ``_http.get`` itself: same host only, a few at most.
        follow_redirects=False,
        # We decode ourselves, bounded (``_http``); never brotli or zstd.
        headers={"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"},
        limits=limits,
        transport=transport,
    ) as client:
        yield client


class _Transport(AiohttpTransport):
    """Every failure of aiohttp raised as an ``httpx.TransportError``.

    httpx-aiohttp maps aiohttp's connection and timeout errors, but lets others
    through (a malformed status line or header, say): the sources promise to
    turn every transport failure into an ``error`` observation, never to raise.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _as_httpx_errors():
            response = await super().handle_async_request(request)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Stream(response.stream),  # type: ignore[arg-type]
            request=request,
            extensions=response.extensions,
        )


class _Stream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._inner:
                yield chunk

    async def aclose(self) -> None:
        with _as_httpx_errors():
            await self._inner.aclose()


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except httpx.ConnectTimeout as exc:
        # httpx-aiohttp reports every connection failure as a timeout; a refused, reset
        # or dropped connection is not one (the pacer never retries a server that timed
        # out within a check, but retries a connection error).
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientError) and not isinstance(cause, TimeoutError):
            raise httpx.ConnectError(f"{type(cause).__name__}: {cause}") from cause
        raise
    except aiohttp.ClientError as exc:
        raise httpx.ProtocolError(f"{type(exc).__name__}: {exc}") from exc
    except TimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "timed out") from exc
