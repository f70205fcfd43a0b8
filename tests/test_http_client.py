"""The sources' HTTP client: broken servers give ``httpx`` errors, never aiohttp's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from lapsewatch.sources._client import open_client

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(reply: Reply) -> AsyncIterator[str]:
    """A loopback TCP server that answers each connection with ``reply``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reply(reader, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/domain/example.com"
    finally:
        server.close()


def writes(data: bytes) -> Reply:
    async def reply(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)

    return reply


async def silent(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)


async def fetch(reply: Reply, timeout: float = 2.0) -> httpx.Response:
    async with (
        raw_server(reply) as url,
        open_client(timeout=timeout, max_connections=4, user_agent="test") as client,
    ):
        return await client.get(url)


def test_a_good_answer_reads_as_httpx() -> None:
    body = b'{"ok": true}'
    response = asyncio.run(
        fetch(writes(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)))
    )
    assert response.status_code == 200
    assert response.json() == {"ok": True}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"SMTP ready\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", id="bad-header"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", id="cut-body"),
        pytest.param(b"", id="closed-at-once"),
        pytest.param(b"HTTP/1.1 99999 Huh\r\n\r\n", id="bad-status"),
    ],
)
def test_a_broken_server_raises_an_httpx_transport_error(data: bytes) -> None:
    with pytest.raises(httpx.TransportError):
        asyncio.run(fetch(writes(data)))


def test_a_silent_server_times_out_as_httpx() -> None:
    with pytest.raises(httpx.TimeoutException):
        asyncio.run(fetch(silent, timeout=0.3))
