"""A loopback-only threaded HTTP server that stops promptly, and JSON reply helpers.

Shared by the RDAP and Fastly fakes: both need an OS-chosen port, a request
counter, a way to "hang" a request that ends at shutdown, and closing of
kept-alive connections so no thread outlives the world.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lapsewatch.world.live import LiveScenario, RequestCounter
from lapsewatch.world.pacing import Pacing

__all__ = ["HOSTILE_FAULTS", "JsonHandler", "LoopbackHTTPServer", "gzip_bomb"]

HOSTILE_FAULTS = ("redirect_loop", "redirect_away", "bad_gzip", "gzip_bomb", "huge", "trickle")
"""Faults of a hostile server that both HTTP fakes can act out (see ``JsonHandler.hostile``)."""
HUGE_BYTES = 60 * 1024 * 1024
BOMB_BYTES = 200 * 1024 * 1024
_bomb: bytes | None = None
_bomb_lock = threading.Lock()


def gzip_bomb() -> bytes:
    """200 MB of spaces, gzipped to about 200 KB (made once per process)."""
    global _bomb
    with _bomb_lock:
        if _bomb is None:
            packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
            block = b" " * (1024 * 1024)
            parts = [packer.compress(block) for _ in range(BOMB_BYTES // len(block))]
            parts.append(packer.flush())
            _bomb = b"".join(parts)
        return _bomb


log = logging.getLogger(__name__)

_Address = tuple[str, int]


class LoopbackHTTPServer(ThreadingHTTPServer):
    """Binds 127.0.0.1 on a free port and serves in a daemon thread."""

    daemon_threads = True
    request_queue_size = 1024  # the default 5 drops connections under a burst (connect timeouts)

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], live: LiveScenario, hang_seconds: float
    ) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.live = live
        self.hang_seconds = hang_seconds
        self.requests = RequestCounter()
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.flaky = 0.0
        self.trickle_seconds = 1.0
        """Pause between the bytes of a 'trickle' answer."""
        self.pacing = Pacing()
        """Fraction of answers about scenario domains replaced by a random 500, 429 or timeout."""
        self._random = random.Random(0)  # repeatable chaos
        self._random_lock = threading.Lock()

    def chaos(self, fault: str) -> str:
        """The fault to act out: the scenario's, or, for a flaky world, a random one."""
        if fault != "ok" or self.flaky <= 0:
            return fault
        with self._random_lock:
            if self._random.random() >= self.flaky:
                return fault
            return self._random.choice(("500", "429", "timeout"))

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, wake hanging handlers and cut kept-alive connections."""
        self.stopping.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self.server_close()

    def hang(self) -> bool:
        """Hold the calling request for ``hang_seconds``; False when the world stopped meanwhile."""
        return not self.stopping.wait(self.hang_seconds)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (its timeout) is expected here, not worth a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive, like real APIs) with helpers for JSON and raw bodies."""

    server: LoopbackHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle kept-alive connections end on their own, too
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK add ~40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True
    server_version = "lapsewatch-world/1"

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def paced(self) -> bool:
        """Apply the world's latency and rate limit; False when this request got a 429."""
        if not self.server.pacing.admit():
            self.send_json(429, {"error": "rate limit exceeded"}, headers={"Retry-After": "1"})
            return False
        self.server.pacing.delay()
        return True

    def send_json(
        self,
        status: int,
        document: object,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps(document, indent=1).encode()
        self.send_body(status, body, content_type, headers)

    def hostile(self, fault: str, body: bytes, content_type: str) -> bool:
        """Act out one of :data:`HOSTILE_FAULTS` (``body`` is the honest answer);
        False when ``fault`` is not one of them."""
        if fault == "redirect_loop":
            self.send_body(302, b"", content_type, {"Location": self.path})
        elif fault == "redirect_away":
            self.send_body(302, b"", content_type, {"Location": f"http://localhost:1{self.path}"})
        elif fault == "bad_gzip":
            self.send_body(
                200, b"this is not gzip " * 8, content_type, {"Content-Encoding": "gzip"}
            )
        elif fault == "gzip_bomb":
            self.send_body(200, gzip_bomb(), content_type, {"Content-Encoding": "gzip"})
        elif fault == "huge":
            self._send_huge(content_type)
        elif fault == "trickle":
            self._trickle(body, content_type)
        else:
            return False
        return True

    def _send_huge(self, content_type: str) -> None:
        """60 MB without a Content-Length: only counting while reading can stop it."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        self.end_headers()
        block = b"[" + b" " * (1024 * 1024 - 1)
        with contextlib.suppress(OSError):
            for _ in range(HUGE_BYTES // len(block)):
                if self.server.stopping.is_set():
                    return
                self.wfile.write(block)

    def _trickle(self, body: bytes, content_type: str) -> None:
        """Status line, headers and body one byte at a time: every read gets data in time."""
        self.close_connection = True
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            for byte in head + body:
                if self.server.stopping.wait(self.server.trickle_seconds):
                    return
                self.wfile.write(bytes([byte]))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
