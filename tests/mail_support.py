"""A real SMTP server on 127.0.0.1 (aiosmtpd) with one inbox per mailbox, and the
helpers the account, mail and attack tests share (a settable clock, a service).

In the test world every address is delivered to this one server, so "mail for
@lapsed.test reaches the attacker" simply means "lands in that inbox".
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from sqlalchemy import Engine
from sqlalchemy.orm import Session as DbSession

from lapsewatch.accounts.core import call
from lapsewatch.accounts.passwords import Passwords
from lapsewatch.accounts.service import (
    AccountService,
    EmailAdded,
    EmailVerified,
    LoginResult,
    PasswordReset,
    RecoveryCodes,
    RecoveryOptions,
    ResetRequested,
    ResetTokenInfo,
    SecurityOverview,
    SignedUp,
    TotpSetup,
    VerificationSent,
)
from lapsewatch.accounts.settings import AccountSettings, RateLimits
from lapsewatch.cycle.domaincheck import DomainChecker
from lapsewatch.mail.links import Links
from lapsewatch.mail.outbox import send_pending
from lapsewatch.schedule import Policy
from lapsewatch.smtp import Mailer, SmtpMailer
from lapsewatch.store.db import make_sessionmaker

PASSWORD = "correct horse battery"
"""The password of the test accounts made by :func:`sign_up_verified` unless told."""
P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "PASSWORD",
    "Accounts",
    "Clock",
    "HangingServer",
    "MailServer",
    "Received",
    "account_settings",
    "deliver_at_once",
    "make_service",
    "sign_up_verified",
    "token_from",
]

_TOKEN = re.compile(r"[?&]token=([A-Za-z0-9_-]+)")


@dataclass(frozen=True)
class Received:
    """One message as delivered to one mailbox."""

    mailbox: str
    mail_from: str
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content()).replace("\r\n", "\n")

    @property
    def kind(self) -> str:
        return str(self.message["X-Lapsewatch-Kind"])


def created(signed: SignedUp) -> int:
    """The new account's id (a sign-up with an address already used makes none)."""
    assert signed.account_id is not None, f"no account was made for {signed.address}"
    return signed.account_id


def token_from(received: Received) -> str:
    """The token of the (single) link in a mail."""
    found = _TOKEN.findall(received.body)
    assert len(found) == 1, received.body
    return str(found[0])


class _Handler:
    def __init__(self, server: MailServer) -> None:
        self.server = server

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.server.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        if self.server.fail_with is not None:
            return self.server.fail_with
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.server.deliver(str(envelope.mail_from), list(envelope.rcpt_tos), message)
        return "250 OK delivered"


class _Controller(Controller):
    """Binds port 0 (a free port chosen by the kernel) and learns which one it got."""

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class MailServer:
    """Start with ``with MailServer() as smtp:``; ``smtp.url`` is the ``LAPSEWATCH_SMTP_URL``."""

    def __init__(self, *, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.fail_with: str | None = None
        """Answer every DATA with this (e.g. ``451 4.3.0 try later``) instead of delivering."""
        self.refuse: set[str] = set()
        """Mailboxes that do not exist (``550`` at RCPT)."""
        self.logins: list[str] = []
        self._lock = threading.Condition()
        self._boxes: dict[str, list[Received]] = defaultdict(list)
        self._controller: _Controller | None = None

    def start(self) -> Self:
        extra: dict[str, Any] = {}
        if self.credentials is not None:
            extra = {"authenticator": self._authenticate, "auth_require_tls": False}
        self._controller = _Controller(_Handler(self), hostname="127.0.0.1", port=0, **extra)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._controller is not None, "the mail server is not running"
        return int(self._controller.port)

    @property
    def url(self) -> str:
        if self.credentials is not None:
            user, password = self.credentials
            return f"smtp://{user}:{password}@127.0.0.1:{self.port}"
        return f"smtp://127.0.0.1:{self.port}"

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.credentials is not None
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if (user, password) == self.credentials:
                self.logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    # -- mailboxes ---------------------------------------------------------------------

    def deliver(self, mail_from: str, rcpt_tos: list[str], message: EmailMessage) -> None:
        with self._lock:
            for rcpt in rcpt_tos:
                self._boxes[rcpt.lower()].append(Received(rcpt.lower(), mail_from, message))
            self._lock.notify_all()

    def inbox(self, address: str) -> list[Received]:
        with self._lock:
            return list(self._boxes.get(address.lower(), []))

    def everything(self) -> list[Received]:
        with self._lock:
            return [r for box in self._boxes.values() for r in box]

    def clear(self) -> None:
        with self._lock:
            self._boxes.clear()
        self.fail_with = None
        self.refuse.clear()

    def wait_for(self, address: str, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until ``address`` has ``count`` messages (mail sent from a background thread)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._boxes.get(address.lower(), [])) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return list(self._boxes.get(address.lower(), []))


class HangingServer:
    """Accepts TCP connections and never says a word: an SMTP server that hangs."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.port: int = self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Clock:
    """An injectable clock: tests move time instead of sleeping."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def account_settings(smtp_url: str, **overrides: Any) -> AccountSettings:
    values: dict[str, Any] = {
        "smtp_url": smtp_url,
        "mail_from": "lapsewatch@registry.test",
        "secret_key": "test-secret-key",
        "base_url": "http://registry.test",
        "smtp_timeout": 2.0,
        "limits": RateLimits(),
    }
    values.update(overrides)
    return AccountSettings(**values)


def deliver_at_once(
    engine: Engine,
    settings: AccountSettings,
    mailer: Mailer,
    *,
    clock: Callable[[], datetime] | None = None,
) -> Callable[[Sequence[int]], bool]:
    """``deliver`` that sends the notices just queued before the service returns, with
    the outbox's own code (the web app's sender does the same from a thread): a test
    reads the mail as soon as the call is over. False if any stays queued."""
    links = Links.from_settings(settings)

    def deliver(ids: Sequence[int]) -> bool:
        summary = send_pending(engine, mailer, links=links, ids=ids, clock=clock)
        return summary.failed == 0 and not summary.stopped

    return deliver


def make_service(
    engine: Engine,
    settings: AccountSettings,
    *,
    clock: Clock,
    checker: DomainChecker | None = None,
    mailer: Mailer | None = None,
    policy: Policy | None = None,
    deliver: bool = True,
) -> Accounts:
    """The services with cheap Argon2 parameters (tests only), called as a request calls
    them (:class:`Accounts`), their mail going through the outbox and out at once to a
    real SMTP server (:func:`deliver_at_once`), or only queued (``deliver=False``)."""
    return Accounts(
        AccountService(
            engine,
            settings,
            deliver=deliver_at_once(
                engine, settings, mailer or SmtpMailer.from_settings(settings), clock=clock
            )
            if deliver
            else None,
            checker=checker,
            policy=policy,
            clock=clock,
            passwords=Passwords.cheapest(),
        )
    )


class Accounts:
    """The account services as their callers use them (the web app's ``context.run``):
    each call in a transaction of its own, which the caller owns and commits, also when
    the call raises an ``AccountError`` (``KEEP``: a refusal whose record must stand)."""

    def __init__(self, service: AccountService) -> None:
        self.service = service
        self.settings = service.settings
        self.engine = service.engine
        self._sessions = make_sessionmaker(service.engine)

    def _run(
        self, action: Callable[Concatenate[DbSession, P], R], *args: P.args, **kw: P.kwargs
    ) -> R:
        return call(self._sessions, action, *args, **kw)

    def sign_up(
        self, username: str, password: str, email: str, *, client: str | None = None
    ) -> SignedUp:
        return self._run(self.service.sign_up, username, password, email, client=client)

    def add_email(self, account_id: int, address: str) -> EmailAdded:
        return self._run(self.service.add_email, account_id, address)

    def remove_email(self, account_id: int, email_id: int) -> None:
        self._run(self.service.remove_email, account_id, email_id)

    def set_primary(self, account_id: int, email_id: int) -> None:
        self._run(self.service.set_primary, account_id, email_id)

    def request_reverification(self, account_id: int, email_id: int) -> VerificationSent:
        return self._run(self.service.request_reverification, account_id, email_id)

    def verify_email(self, token: str, *, session_account_id: int | None = None) -> EmailVerified:
        return self._run(self.service.verify_email, token, session_account_id=session_account_id)

    def login(
        self,
        username: str,
        password: str,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        client: str | None = None,
    ) -> LoginResult:
        return self._run(
            self.service.login,
            username,
            password,
            totp_code=totp_code,
            recovery_code=recovery_code,
            client=client,
        )

    def complete_login(
        self,
        account_id: int,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        client: str | None = None,
    ) -> LoginResult:
        return self._run(
            self.service.complete_login,
            account_id,
            totp_code=totp_code,
            recovery_code=recovery_code,
            client=client,
        )

    def end_sessions(self, account_id: int) -> int:
        return self._run(self.service.end_sessions, account_id)

    def reauthenticate(self, account_id: int, password: str) -> None:
        self._run(self.service.reauthenticate, account_id, password)

    def begin_totp_setup(self, account_id: int) -> TotpSetup:
        return self._run(self.service.begin_totp_setup, account_id)

    def confirm_totp(self, account_id: int, code: str) -> RecoveryCodes:
        return self._run(self.service.confirm_totp, account_id, code)

    def disable_totp(self, account_id: int, password: str) -> None:
        self._run(self.service.disable_totp, account_id, password)

    def regenerate_recovery_codes(self, account_id: int, password: str) -> RecoveryCodes:
        return self._run(self.service.regenerate_recovery_codes, account_id, password)

    def change_password(self, account_id: int, current_password: str, new_password: str) -> int:
        return self._run(self.service.change_password, account_id, current_password, new_password)

    def security_overview(self, account_id: int) -> SecurityOverview:
        return self._run(self.service.security_overview, account_id)

    def request_password_reset(
        self, identifier: str, *, client: str | None = None
    ) -> ResetRequested:
        return self._run(self.service.request_password_reset, identifier, client=client)

    def check_reset_token(self, token: str) -> ResetTokenInfo:
        return self._run(self.service.check_reset_token, token)

    def reset_password(self, token: str, new_password: str) -> PasswordReset:
        return self._run(self.service.reset_password, token, new_password)

    def recovery_options(self, account_id: int) -> RecoveryOptions:
        return self._run(self.service.recovery_options, account_id)


def sign_up_verified(
    svc: Accounts,
    smtp: MailServer,
    username: str,
    address: str,
    *more: str,
    password: str = PASSWORD,
) -> int:
    """An account whose addresses were all verified through their mailed links."""
    account_id = created(svc.sign_up(username, password, address))
    svc.verify_email(token_from(smtp.inbox(address)[-1]))
    for extra in more:
        svc.add_email(account_id, extra)
        svc.verify_email(token_from(smtp.inbox(extra)[-1]))
    return account_id
