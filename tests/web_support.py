"""Helpers the web tests share: an app over a test database, a form-filling client,
an admin and an API key, a live uvicorn server on loopback, a webhook receiver.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from lapsewatch.accounts.domaincheck import DomainChecker
from lapsewatch.accounts.passwords import Passwords
from lapsewatch.accounts.service import AccountService
from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.config import Settings
from lapsewatch.cycle.apply import CheckResult
from lapsewatch.cycle.due import DueDomain
from lapsewatch.mail.smtp import SmtpMailer
from lapsewatch.schedule import Policy
from lapsewatch.store import Account, make_sessionmaker
from lapsewatch.web.apikeys import create_api_key
from lapsewatch.web.app import create_app

__all__ = [
    "PASSWORD",
    "LiveServer",
    "NoChecker",
    "Receiver",
    "WebClient",
    "csrf_of",
    "make_admin",
    "make_api_key",
    "make_service",
    "make_web_app",
]

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token in a rendered page (every form on a page carries the same one)."""
    found = _CSRF.search(html)
    assert found is not None, "no CSRF token on this page"
    return found.group(1)


class NoChecker:
    """A checker for apps whose tests never check a domain: no source is ever asked."""

    def check(self, due: DueDomain, *, now: datetime) -> CheckResult:
        raise AssertionError(f"this test did not expect {due.name} to be checked")


def make_service(
    engine: Engine,
    settings: AccountSettings,
    *,
    clock: Callable[[], datetime] | None = None,
    checker: DomainChecker | None = None,
    policy: Policy | None = None,
) -> AccountService:
    """Cheap Argon2 (tests only), real SMTP, and real time unless a clock is given."""
    return AccountService(
        engine,
        settings,
        mailer=SmtpMailer.from_settings(settings),
        checker=checker,
        policy=policy,
        clock=clock or (lambda: datetime.now(UTC)),
        passwords=Passwords.cheapest(),
    )


def make_web_app(
    engine: Engine,
    service: AccountService,
    *,
    settings: Settings | None = None,
    checker: DomainChecker | None = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    return create_app(
        engine,
        service,
        settings or Settings(),
        domain_checker=checker or NoChecker(),
        clock=clock,
    )


def make_admin(engine: Engine, username: str) -> None:
    """Grant the admin role to an existing account (as ``lapsewatch admin grant`` does)."""
    with make_sessionmaker(engine).begin() as session:
        account = session.scalars(select(Account).where(Account.username == username)).one()
        account.is_admin = True


def make_api_key(engine: Engine, name: str = "registry") -> str:
    return create_api_key(engine, name, now=datetime.now(UTC))


class WebClient:
    """A browser without a browser: keeps cookies, fills forms with their CSRF token."""

    def __init__(self, client: TestClient | httpx.Client) -> None:
        self.http = client
        self.token = ""

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.get(path, **kwargs)
        found = _CSRF.search(response.text)
        if found is not None:
            self.token = found.group(1)
        return response

    def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """POST a form; the token of the last page seen is added unless ``csrf=False``."""
        form = dict(data or {})
        if csrf:
            if not self.token:
                self.get("/account/login")
            form.setdefault("csrf_token", self.token)
        response = self.http.post(path, data=form, **kwargs)
        found = _CSRF.search(response.text)
        if found is not None:
            self.token = found.group(1)
        return response

    def sign_up(self, username: str, email: str, password: str = PASSWORD) -> httpx.Response:
        self.get("/account/sign-up")
        return self.post(
            "/account/sign-up",
            {"username": username, "email": email, "password": password, "confirm": password},
        )

    def log_in(self, username: str, password: str = PASSWORD) -> httpx.Response:
        self.get("/account/login")
        return self.post("/account/login", {"username": username, "password": password})

    def log_out(self) -> httpx.Response:
        self.get("/account/security")
        return self.post("/account/logout")


# ------------------------------------------------------------------------- live server


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveServer:
    """uvicorn in a thread on a socket bound first, so the URL is known before the app."""

    def __init__(self) -> None:
        self._socket = _free_socket()
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()


# ----------------------------------------------------------------------- webhook receiver


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records POSTs and answers ``status``."""

    status: int = 204
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/lapsewatch"

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.received.append(Received(dict(self.headers.items()), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)
