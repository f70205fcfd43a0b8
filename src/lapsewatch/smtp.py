"""Sending mail over SMTP (``LAPSEWATCH_SMTP_URL``), with a timeout on every step.

Everything that goes wrong (refused connection, timeout, TLS failure, a 4xx or
5xx answer) becomes one :class:`MailError`, so callers have a single thing to
catch and can keep the message for the next attempt. Every mail is queued in the
outbox first (:mod:`lapsewatch.mail.outbox`), which calls this.
"""

from __future__ import annotations

import functools
import logging
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit

__all__ = [
    "Mail",
    "MailError",
    "Mailer",
    "SmtpConfig",
    "SmtpConnection",
    "SmtpMailer",
    "build_message",
]

log = logging.getLogger(__name__)

Security = Literal["plain", "starttls", "tls"]
_SCHEMES: dict[str, tuple[Security, int]] = {
    "smtp": ("plain", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}


@dataclass(frozen=True)
class Mail:
    """One plain-text message to one or more addresses of the same owner."""

    to: tuple[str, ...]
    subject: str
    body: str
    kind: str = "notice"
    """What it is (``verify_email``, ``password_reset``, a notice kind): a header and a log key."""


class MailError(Exception):
    """Sending failed; nothing was accepted by the server for delivery."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        """The server refused this message for good (5xx); other messages may still pass."""


class Mailer(Protocol):
    """Anything that can send a :class:`Mail`; raises :class:`MailError` on failure."""

    def send(self, mail: Mail) -> None: ...


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: Security = "plain"
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        """``smtp://host[:port]``, ``smtp+starttls://user:pass@host[:587]``, ``smtps://…``."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"SMTP URL {url!r}: expected one of {', '.join(_SCHEMES)}://")
        if not parts.hostname:
            raise ValueError(f"SMTP URL {url!r} has no host")
        security, default_port = _SCHEMES[parts.scheme]
        try:
            port = parts.port or default_port
        except ValueError:
            raise ValueError(f"SMTP URL {url!r} has a bad port") from None
        return cls(
            host=parts.hostname,
            port=port,
            security=security,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )


def build_message(mail: Mail, *, sender: str, now: datetime | None = None) -> EmailMessage:
    """A text/plain UTF-8 message with the headers that keep auto-replies away."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(mail.to)
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message["X-Lapsewatch-Kind"] = mail.kind
    message.set_content(mail.body)
    return message


def _text(answer: bytes | str) -> str:
    return answer.decode("utf-8", "replace") if isinstance(answer, bytes) else answer


class SmtpConnection:
    """One open SMTP session; send several messages without reconnecting."""

    def __init__(self, client: smtplib.SMTP, sender: str) -> None:
        self._client = client
        self._sender = sender

    def send(self, mail: Mail) -> None:
        if not mail.to:
            raise MailError("no recipients", permanent=True)
        try:
            message = build_message(mail, sender=self._sender)
        except ValueError as exc:  # e.g. a line break in a header
            raise MailError(f"cannot build the message: {exc}", permanent=True) from None
        try:
            refused = self._client.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            raise MailError(f"every recipient refused: {exc.recipients}", permanent=True) from None
        except smtplib.SMTPResponseException as exc:
            text = _text(exc.smtp_error)
            raise MailError(
                f"SMTP {exc.smtp_code}: {text}", permanent=500 <= exc.smtp_code < 600
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"sending failed: {exc!r}") from None
        if refused:
            # Delivered to the others; a retry would repeat it for them, so it counts as sent.
            log.warning("SMTP server refused some recipients of %s: %s", mail.kind, refused)


class MailSettings(Protocol):
    """Where and as whom to send (``AccountSettings`` has them, from ``LAPSEWATCH_SMTP_*``)."""

    @property
    def smtp_url(self) -> str: ...
    @property
    def mail_from(self) -> str: ...
    @property
    def smtp_timeout(self) -> float: ...


class SmtpMailer:
    """Connects per call (or per :meth:`connect` block); every socket step has a timeout."""

    def __init__(self, config: SmtpConfig, *, sender: str, timeout: float = 10.0) -> None:
        self.config = config
        self.sender = sender
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: MailSettings) -> SmtpMailer:
        return cls(
            SmtpConfig.from_url(settings.smtp_url),
            sender=settings.mail_from,
            timeout=settings.smtp_timeout,
        )

    @contextmanager
    def connect(self) -> Iterator[SmtpConnection]:
        """An open, authenticated session; raises :class:`MailError` if it cannot open."""
        client = self._open()
        try:
            yield SmtpConnection(client, self.sender)
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()

    def send(self, mail: Mail) -> None:
        with self.connect() as connection:
            connection.send(mail)

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        """Made once per mailer, and only for a server spoken to over TLS: loading the
        system's CA certificates costs about 45 ms of CPU, which every mail paid."""
        return ssl.create_default_context()

    def _open(self) -> smtplib.SMTP:
        config = self.config
        client: smtplib.SMTP | None = None
        try:
            if config.security == "tls":
                client = smtplib.SMTP_SSL(
                    config.host, config.port, timeout=self.timeout, context=self._tls
                )
            else:
                client = smtplib.SMTP(config.host, config.port, timeout=self.timeout)
            client.ehlo_or_helo_if_needed()
            if config.security == "starttls":
                client.starttls(context=self._tls)
                client.ehlo()
            if config.username is not None:
                client.login(config.username, config.password or "")
            return client
        except smtplib.SMTPResponseException as exc:
            if client is not None:
                client.close()
            text = _text(exc.smtp_error)
            raise MailError(
                f"SMTP server {config.host}:{config.port}: {exc.smtp_code} {text}"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            if client is not None:
                client.close()
            raise MailError(
                f"cannot reach SMTP server {config.host}:{config.port}: {exc!r}"
            ) from None
