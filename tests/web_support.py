"""Helpers the web tests share: an app over a test database, a form-filling client,
an admin and an API key, a live uvicorn server on loopback, a webhook receiver, and
a resolver for webhook hosts that never asks a real DNS server.
"""

from __future__ import annotations

import ipaddress
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
import pyotp
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from lapsewatch.accounts.passwords import Passwords
from lapsewatch.accounts.service import AccountService
from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.config import Settings
from lapsewatch.cycle.apply import CheckResult
from lapsewatch.cycle.domaincheck import DomainChecker
from lapsewatch.cycle.due import DueDomain
from lapsewatch.schedule import Policy
from lapsewatch.smtp import SmtpMailer
from lapsewatch.store import Account, make_sessionmaker
from lapsewatch.web import webhooks
from lapsewatch.web.apikeys import create_api_key
from lapsewatch.web.app import create_app
from lapsewatch.web.config import WebSettings
from tests.mail_support import Accounts, deliver_at_once

__all__ = [
    "LOOPBACK",
    "PASSWORD",
    "PUBLIC_IP",
    "FakeDns",
    "LiveServer",
    "NoChecker",
    "Receiver",
    "WebClient",
    "csrf_of",
    "install_fake_dns",
    "make_admin",
    "make_api_key",
    "make_service",
    "make_web_app",
    "secret_of",
]

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_SECRET = re.compile(r'data-secret="([A-Z2-7]+)"')
LOOPBACK = WebSettings(webhook_allow=(ipaddress.ip_network("127.0.0.1/32"),))
"""Web settings whose allow-list lets webhooks reach the tests' loopback receivers."""
PUBLIC_IP = "93.184.215.14"
"""A public address fake names resolve to; registering a webhook never connects to it."""


class FakeDns:
    """Stands in for :func:`lapsewatch.web.webhooks.resolve_host`: IP literals (every
    form the C library accepts, resolved without any network) and ``localhost`` as
    the system has them, listed names as listed, every other name unknown."""

    def __init__(self, names: dict[str, list[str]] | None = None) -> None:
        self.names = dict(names or {})
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[webhooks.IPAddress]:
        self.asked.append(host)
        if host in self.names:
            return [ipaddress.ip_address(a) for a in self.names[host]]
        if host != "localhost":
            try:
                socket.getaddrinfo(host, port, flags=socket.AI_NUMERICHOST)
            except socket.gaierror:
                raise socket.gaierror(socket.EAI_NONAME, f"{host}: unknown (fake DNS)") from None
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [ipaddress.ip_address(str(info[4][0])) for info in infos]


def install_fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """No test resolves a real name: ``registry.test`` is public here, others unknown."""
    dns = FakeDns({"registry.test": [PUBLIC_IP]})
    monkeypatch.setattr(webhooks, "resolve_host", dns)
    return dns


def secret_of(html: str) -> str:
    """The TOTP secret on a 2FA set-up page."""
    found = _SECRET.search(html)
    assert found is not None, "no TOTP secret on this page"
    return found.group(1)


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
) -> Accounts:
    """Cheap Argon2 (tests only), real SMTP, and real time unless a clock is given;
    called as a request calls them (:class:`~tests.mail_support.Accounts`)."""
    return Accounts(
        AccountService(
            engine,
            settings,
            deliver=deliver_at_once(
                engine, settings, SmtpMailer.from_settings(settings), clock=clock
            ),
            checker=checker,
            policy=policy,
            clock=clock or (lambda: datetime.now(UTC)),
            passwords=Passwords.cheapest(),
        )
    )


def make_web_app(
    engine: Engine,
    service: Accounts,
    *,
    settings: Settings | None = None,
    checker: DomainChecker | None = None,
    clock: Callable[[], datetime] | None = None,
    web_settings: WebSettings | None = None,
) -> FastAPI:
    return create_app(
        engine,
        service.service,
        settings or Settings(),
        domain_checker=checker or NoChecker(),
        clock=clock,
        web_settings=web_settings,
    )


def make_admin(engine: Engine, username: str) -> None:
    """Grant the admin role to an existing account (as ``lapsewatch admin grant`` does);
    the admin pages open once the account also has 2FA (:meth:`WebClient.enable_2fa`)."""
    with make_sessionmaker(engine).begin() as session:
        account = session.scalars(select(Account).where(Account.username == username)).one()
        account.is_admin = True


def make_api_key(engine: Engine, name: str = "registry") -> str:
    with make_sessionmaker(engine).begin() as session:
        return create_api_key(session, name, now=datetime.now(UTC))


class WebClient:
    """A browser without a browser: keeps cookies, fills forms with their CSRF token."""

    def __init__(self, client: TestClient | httpx.Client) -> None:
        self.http = client
        self.token = ""
        self._last_url = ""

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.get(path, **kwargs)
        self._seen(response)
        return response

    def _seen(self, response: httpx.Response) -> None:
        self._last_url = str(response.url)
        found = _CSRF.search(response.text)
        if found is not None:
            self.token = found.group(1)

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
        self._seen(response)
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

    def confirm_password(self, password: str = PASSWORD) -> httpx.Response:
        """Answer the confirm-password page this client was sent to (or go there)."""
        if "/account/confirm-password" not in self.last_url:
            self.get("/account/confirm-password")
        return self.post("/account/confirm-password", {"password": password})

    def enable_2fa(self) -> str:
        """Turn 2FA on for the logged-in account (recently logged in); its secret."""
        page = self.get("/account/2fa")
        assert page.status_code == 200, page.text
        secret = secret_of(page.text)
        # The previous time step's code (still accepted): the confirming code cannot sign
        # in again, so the current one stays free for a login right after.
        done = self.post("/account/2fa", {"code": pyotp.TOTP(secret).at(time.time() - 30)})
        assert done.status_code == 200, done.text
        assert "recovery-codes" in done.text
        return secret

    @property
    def last_url(self) -> str:
        return self._last_url


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
