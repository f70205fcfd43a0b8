"""Two pure ASGI guards that run before any handler reads a request body.

* :class:`ApiKeyGate` refuses an ``/api/v1/`` request without a valid API key
  with 401 *before* a byte of its body is read: an anonymous client cannot make
  the server buffer or parse anything.
* :class:`BodyLimit` refuses a body over its limit with 413, whether the size is
  declared (``Content-Length``: refused before reading) or not (chunked: counted
  as it arrives, refused as soon as the count passes the limit). Nothing is
  buffered here; the limit bounds what the app itself may buffer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import anyio.to_thread
from sqlalchemy import Engine
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lapsewatch.store.db import make_sessionmaker
from lapsewatch.web.apikeys import ApiKeyInfo, authenticate

__all__ = ["API_KEY_STATE", "ApiKeyGate", "BodyLimit", "BodyTooLarge", "key_of"]

API_KEY_STATE = "api_key"
"""Where :class:`ApiKeyGate` leaves the authenticated key (``request.state.api_key``)."""
UNAUTHENTICATED = "a valid API key is required: Authorization: Bearer <key>"


async def key_of(engine: Engine, key: str) -> ApiKeyInfo | None:
    """The live API key ``key``, looked up in a thread in a read-only session of its own
    (the gate runs before the request has any)."""

    def look_up() -> ApiKeyInfo | None:
        with make_sessionmaker(engine)() as session:
            return authenticate(session, key)

    return await anyio.to_thread.run_sync(look_up)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"the request body is over {limit} bytes")


async def _send_json(send: Send, status: int, body: object, headers: Mapping[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    """At most ``limits[(method, path)]`` bytes of body, else ``default`` bytes."""

    def __init__(
        self, app: ASGIApp, *, default: int, limits: Mapping[tuple[str, str], int] | None = None
    ) -> None:
        self.app = app
        self.default = default
        self.limits = dict(limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get((scope["method"], scope["path"]), self.default)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        # "Connection: close": the rest of the body is not read, so the connection ends.
        await _send_json(
            send,
            413,
            {"detail": f"the request body is over {limit} bytes"},
            {"Connection": "close"},
        )


class ApiKeyGate:
    """401 for any request under ``prefix`` (but ``public`` paths) without a live API key."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: Engine,
        prefix: str = "/api/v1/",
        public: frozenset[str] = frozenset({"/api/v1/openapi.json"}),
    ) -> None:
        self.app = app
        self.engine = engine
        self.prefix = prefix
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith(self.prefix) or path in self.public:
            await self.app(scope, receive, send)
            return
        key = await self._authenticate(Headers(scope=scope).get("authorization", ""))
        if key is None:
            await _send_json(
                send,
                401,
                {"detail": UNAUTHENTICATED},
                {"WWW-Authenticate": "Bearer", "Connection": "close"},
            )
            return
        scope.setdefault("state", {})[API_KEY_STATE] = key
        await self.app(scope, receive, send)

    async def _authenticate(self, header: str) -> ApiKeyInfo | None:
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        return await key_of(self.engine, credentials.strip())
