"""The sources' HTTP client: broken servers give ``httpx`` errors, never aiohttp's."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from lapsewatch.sources import _http
from lapsewatch.sources._client import open_client
from lapsewatch.sources.rdap import parse_domain_object

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


# ---------------------------------------------- issue #11: deadlines, caps, redirects


async def bounded(reply: Reply, *, deadline: float = 1.0, max_bytes: int = 1000) -> _http.Reply:
    async with (
        raw_server(reply) as url,
        open_client(timeout=5.0, max_connections=4, user_agent="test") as client,
    ):
        return await _http.get(
            client, url, attempts=1, max_retry_after=0, deadline=deadline, max_bytes=max_bytes
        )


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def test_a_gzip_answer_is_decoded() -> None:
    reply = asyncio.run(
        bounded(writes(answer(gzip.compress(b'{"a": 1}'), "Content-Encoding: gzip")))
    )
    assert reply.content == b'{"a": 1}'


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(answer(b"x" * 5000), "refused (limit 1000)", id="declared-too-long"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 5000,
            "longer than 1000 bytes",
            id="streamed-too-long",
        ),
        pytest.param(
            answer(gzip.compress(b" " * 400_000), "Content-Encoding: gzip"),
            "unpacks to more than 1000 bytes",
            id="gzip-bomb",
        ),
        pytest.param(
            answer(b"not gzip at all", "Content-Encoding: gzip"),
            "does not decode",
            id="bad-gzip",
        ),
        pytest.param(
            answer(gzip.compress(b"{}" * 100)[:-12], "Content-Encoding: gzip"),
            "cut short",
            id="cut-gzip",
        ),
        pytest.param(answer(b"{}", "Content-Encoding: br"), "unsupported", id="brotli"),
        pytest.param(
            answer(b"", "Location: /domain/example.com", status="302 Found"),
            "more than 3 redirects",
            id="redirect-loop",
        ),
        pytest.param(
            answer(b"", "Location: http://localhost:1/x", status="301 Moved"),
            "another host: not followed",
            id="redirect-away",
        ),
    ],
)
def test_a_hostile_answer_is_a_fetch_error_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(_http.FetchError, match=re.escape(reason)):
        asyncio.run(bounded(writes(data)))


def test_a_trickle_is_cut_at_the_deadline_though_every_read_gets_data() -> None:
    async def trickle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for byte in answer(b'{"a": 1}' * 10):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)  # far below the 5 s read timeout

    with pytest.raises(_http.RequestDeadline, match=re.escape("no answer within 0.3 s")):
        asyncio.run(bounded(trickle, deadline=0.3))


def test_raw_deflate_is_decoded_too() -> None:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = packer.compress(b"hello") + packer.flush()
    reply = asyncio.run(bounded(writes(answer(raw, "Content-Encoding: deflate"))))
    assert reply.content == b"hello"


RECORD = {"objectClassName": "domain", "ldhName": "EXAMPLE.COM", "status": ["active"]}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({**RECORD, "objectClassName": "entity"}, "objectClassName 'entity'"),
        ({k: v for k, v in RECORD.items() if k != "objectClassName"}, "no objectClassName"),
        ({k: v for k, v in RECORD.items() if k != "ldhName"}, "names no domain"),
        ({**RECORD, "ldhName": "OTHER.COM"}, "about 'OTHER.COM'"),
        ({**RECORD, "unicodeName": "other.com"}, "(unicodeName)"),
        ({"errorCode": 404, "title": "Not Found"}, "error object 404"),
        ({**RECORD, "errorCode": 500}, "error object 500"),
    ],
)
def test_rdap_is_strict_about_whose_record_it_is(data: dict[str, object], reason: str) -> None:
    observation = parse_domain_object(data, "example.com")
    assert not observation.answered
    assert reason in observation.detail


def test_an_idn_record_may_name_itself_in_unicode_only() -> None:
    data = {"objectClassName": "domain", "unicodeName": "bücher.de", "status": ["active"]}
    assert parse_domain_object(data, "xn--bcher-kva.de").answered


def test_a_refused_or_dropped_connection_is_not_a_timeout(
    closed_port: Callable[[], int],
) -> None:
    """httpx-aiohttp calls every connection failure a ConnectTimeout; the pacer refuses a
    retry to a server that timed out, so a refused or reset connection must not be one."""
    closed = closed_port()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # accepted, then reset at once

    async def scenario() -> list[type[BaseException]]:
        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        dropping = server.sockets[0].getsockname()[1]
        raised: list[type[BaseException]] = []
        try:
            async with open_client(timeout=5.0, max_connections=4, user_agent="t") as client:
                for port in (closed, dropping):
                    with pytest.raises(httpx.TransportError) as caught:
                        await client.get(f"http://127.0.0.1:{port}/")
                    raised.append(type(caught.value))
        finally:
            server.close()
        return raised

    raised = asyncio.run(scenario())
    assert len(raised) == 2
    assert not any(issubclass(kind, httpx.TimeoutException) for kind in raised), raised


# ------------------------------------------------------ retries: waits and their cost


def test_retries_wait_longer_each_time_and_honour_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three 503s: waits of 0.2 s then 0.4 s (plus up to 1 s of jitter each); a
    ``Retry-After`` replaces the computed wait exactly."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    async def go(data: bytes, attempts: int) -> _http.Reply:
        async with (
            raw_server(writes(data)) as url,
            open_client(timeout=5.0, max_connections=4, user_agent="test") as client,
        ):
            monkeypatch.setattr(asyncio, "sleep", sleep)
            try:
                return await _http.get(client, url, attempts=attempts, max_retry_after=1)
            finally:
                monkeypatch.undo()

    reply = asyncio.run(go(answer(b"busy", status="503 Busy"), attempts=3))
    assert reply.status_code == 503  # the last attempt's status, returned
    assert len(waits) == 2
    assert 0.2 <= waits[0] <= 1.2, waits
    assert 0.4 <= waits[1] <= 1.4, waits
    waits.clear()
    reply = asyncio.run(go(answer(b"", "Retry-After: 1", status="429 Slow"), attempts=2))
    assert reply.status_code == 429
    assert waits == [1.0]


def test_a_cancellation_between_attempts_carries_no_failed_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The domain's deadline cancels a request while it waits to retry: the cancellation
    is clean (no failed attempt as its context, keeping the last reply alive)."""
    real_sleep = asyncio.sleep

    async def go() -> BaseException:
        waiting = asyncio.Event()

        async def sleep(seconds: float) -> None:
            if seconds >= _http.WAIT_INITIAL:  # the wait before the second attempt
                waiting.set()
            await real_sleep(seconds)

        async with (
            raw_server(writes(answer(b"busy", status="503 Busy"))) as url,
            open_client(timeout=5.0, max_connections=4, user_agent="test") as client,
        ):
            monkeypatch.setattr(asyncio, "sleep", sleep)
            task = asyncio.create_task(_http.get(client, url, attempts=3, max_retry_after=0))
            await waiting.wait()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError as exc:
                return exc
            raise AssertionError("not cancelled")

    cancelled = asyncio.run(go())
    assert cancelled.__context__ is None, repr(cancelled.__context__)


def test_a_request_leaves_no_more_garbage_than_httpx_itself() -> None:
    """What ``get`` adds to a request is freed by reference counting, not left for the
    garbage collector: the cycle raises the collector's thresholds while it runs, so
    garbage in reference cycles piles up. httpx's own response and stream refer to each
    other (about 35 objects a request, measured here as the floor); the retry library
    used before added about 50 more a request, for every request, retried or not."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # keep-alive: one connection for every request
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer(b'{"ok": true}'))
                await writer.drain()

    async def garbage(request: Callable[[], Awaitable[object]]) -> int:
        await request()  # warm up: the connection, caches
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(50):
                await request()
            return gc.collect()
        finally:
            if enabled:
                gc.enable()

    async def go() -> tuple[int, int]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/domain/example.com"
        async with (
            server,
            open_client(timeout=5.0, max_connections=4, user_agent="test") as client,
        ):
            plain = await garbage(lambda: client.get(url))
            ours = await garbage(lambda: _http.get(client, url, attempts=3, max_retry_after=0))
        return plain, ours

    plain, ours = asyncio.run(go())
    assert ours <= plain + 100, (plain, ours)  # at most 2 objects a request more


def test_clients_and_webhook_rounds_load_the_ca_certificates_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each load cost ~45 ms of CPU, paid by every check at verification and every round
    of webhook deliveries."""
    import ssl

    from lapsewatch.store import make_engine, upgrade
    from lapsewatch.tls import client_context
    from lapsewatch.web.webhooks import deliver_webhooks

    loads: list[object] = []
    real = ssl.create_default_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        loads.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    monkeypatch.setattr("urllib.request.getproxies", dict)  # behind a proxy, httpx's own
    client_context.cache_clear()

    async def open_twice() -> None:
        for _ in range(2):
            async with open_client(timeout=1.0, max_connections=1, user_agent="test"):
                pass

    asyncio.run(open_twice())
    engine = make_engine("sqlite://")
    upgrade(engine)
    for _ in range(2):
        deliver_webhooks(engine)
    engine.dispose()
    assert len(loads) == 2  # one for aiohttp's clients, one for httpcore's
