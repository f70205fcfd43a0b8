"""Settings of the registry side (accounts and mail), read from ``LAPSEWATCH_*`` variables.

Kept apart from :class:`lapsewatch.config.Settings` (the check cycle's) so a
registry that only runs the cycle never needs a mail server or a secret key.
Only four values come from the environment; the rest are policy with safe
defaults that tests and embedders override by constructing the dataclass.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from lapsewatch.config import ConfigError

__all__ = ["AccountSettings", "Limit", "RateLimits"]

DEFAULT_SMTP_URL = "smtp://127.0.0.1:25"
DEFAULT_MAIL_FROM = "lapsewatch@localhost"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
SMTP_SCHEMES = ("smtp", "smtps", "smtp+starttls")


@dataclass(frozen=True)
class Limit:
    """At most ``count`` attempts per ``window`` (a sliding window)."""

    count: int
    window: timedelta


@dataclass(frozen=True)
class RateLimits:
    """Every limit in one place, so an operator can see what an attacker can try."""

    reset_per_identifier: Limit = Limit(3, timedelta(hours=1))
    """Reset requests naming one username or address: bounds mail-bombing a victim."""
    reset_per_account: Limit = Limit(3, timedelta(hours=1))
    """Reset mails to one account, however it was named (username, then each address)."""
    reset_per_client: Limit = Limit(20, timedelta(hours=1))
    """Reset requests from one client (IP): bounds probing many accounts."""
    login_per_username: Limit = Limit(10, timedelta(minutes=15))
    """Failed password checks for one username: bounds online guessing."""
    login_per_client: Limit = Limit(50, timedelta(minutes=15))
    """Failed logins from one client, whatever the usernames (password spraying)."""
    second_factor_per_account: Limit = Limit(5, timedelta(minutes=15))
    """Failed TOTP/recovery codes: a 6-digit code must not be brute-forced."""
    verification_mails_per_account: Limit = Limit(10, timedelta(hours=1))
    """Verification links one account may ask for: no mail-bombing through add_email."""
    sign_ups_per_client: Limit = Limit(10, timedelta(hours=1))


@dataclass(frozen=True)
class AccountSettings:
    """Accounts and mail configuration; build with :meth:`from_env` or directly in tests."""

    smtp_url: str = DEFAULT_SMTP_URL
    """``smtp://host:port`` (plain), ``smtp+starttls://user:pass@host:587`` or
    ``smtps://user:pass@host:465``."""
    mail_from: str = DEFAULT_MAIL_FROM
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    """Keys the HMAC that pseudonymises rate-limit keys (and the web app's cookies)."""
    secret_key_generated: bool = False
    """True when no ``LAPSEWATCH_SECRET_KEY`` was given: sessions end with the process."""
    base_url: str = DEFAULT_BASE_URL
    """Where links in mails point (the web app's public address)."""
    smtp_timeout: float = 10.0
    """Seconds for one SMTP connection/command; a dead server must not hang a request."""
    verify_token_ttl: timedelta = timedelta(hours=24)
    reset_token_ttl: timedelta = timedelta(hours=1)
    min_password_length: int = 10
    max_password_length: int = 1024
    """Bounds the hashing work one request can cause."""
    max_addresses: int = 10
    recovery_code_count: int = 10
    expiry_warning: timedelta = timedelta(weeks=4)
    """How long before a known expiration date the owner is warned."""
    limits: RateLimits = RateLimits()

    def __post_init__(self) -> None:
        if urlsplit(self.smtp_url).scheme not in SMTP_SCHEMES:
            raise ConfigError(
                f"LAPSEWATCH_SMTP_URL={self.smtp_url!r}: expected {', '.join(SMTP_SCHEMES)}://"
            )
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ConfigError(f"LAPSEWATCH_BASE_URL={self.base_url!r}: expected http(s)://")
        if "@" not in self.mail_from:
            raise ConfigError(f"LAPSEWATCH_MAIL_FROM={self.mail_from!r} is not an address")
        if not self.secret_key:
            raise ConfigError("LAPSEWATCH_SECRET_KEY is empty")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AccountSettings:
        """Read the four variables; raise :class:`ConfigError` naming a bad one."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"LAPSEWATCH_{name}")
            return value.strip() if value is not None and value.strip() else None

        secret = get("SECRET_KEY")
        return cls(
            smtp_url=get("SMTP_URL") or DEFAULT_SMTP_URL,
            mail_from=get("MAIL_FROM") or DEFAULT_MAIL_FROM,
            secret_key=secret or secrets.token_urlsafe(32),
            secret_key_generated=secret is None,
            base_url=(get("BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
        )
