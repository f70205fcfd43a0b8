"""The store's tables: accounts, their addresses, the domains behind them,
what each source observed, queued notices, and the append-only event log.

One ``domains`` row is shared by every address on that registrable domain, so
a domain is checked once however many accounts use it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    case,
    or_,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from lapsewatch.names import address_key, username_key

__all__ = [
    "WEBHOOK_MAX_ATTEMPTS",
    "Account",
    "AddressHistory",
    "ApiKey",
    "Base",
    "Domain",
    "Email",
    "Event",
    "MailHostVerdict",
    "Notice",
    "ObservationRow",
    "RateLimitHit",
    "RecoveryCode",
    "ServerRate",
    "Token",
    "UTCDateTime",
    "Webhook",
    "WebhookDelivery",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _username_key(context: DefaultExecutionContext) -> str:
    return username_key(context.get_current_parameters()["username"])  # type: ignore[no-untyped-call]


def _address_key(context: DefaultExecutionContext) -> str:
    return address_key(context.get_current_parameters()["address"])  # type: ignore[no-untyped-call]


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads it from the class
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    username_key: Mapped[str] = mapped_column(String(150), unique=True, default=_username_key)
    """NFKC, case-folded: ``Root`` and ``root`` (even full-width) are one account name."""
    owner: Mapped[str] = mapped_column(String(100), default="web", server_default="web")
    """Who may change the account: ``web`` (the web app, its owner's sign-up), ``import``
    (the CLI importer) or ``api:<key name>``. A push or import touches only its own."""
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Bumped to end every session at once (logout, password change, 2FA turned on)."""
    totp_pending_secret: Mapped[str | None] = mapped_column(String(64))
    """The secret being set up, kept server-side until a code confirms it."""
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    projects: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime]
    password_hash: Mapped[str | None] = mapped_column(String(255))
    """Argon2 hash; ``None`` for accounts imported from a registry that keeps its own."""
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    """Set once 2FA set-up is confirmed (``totp_enabled``)."""

    emails: Mapped[list[Email]] = relationship(
        back_populates="account", order_by="Email.id", cascade="all, delete-orphan"
    )
    unused_recovery_codes: Mapped[list[RecoveryCode]] = relationship(
        primaryjoin="and_(RecoveryCode.account_id == Account.id, RecoveryCode.used_at.is_(None))",
        viewonly=True,
    )


class RecoveryCode(Base):
    """One 2FA recovery code (its Argon2 hash); spent by one conditional UPDATE."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(String(255))
    used_at: Mapped[datetime | None]


class Email(Base):
    __tablename__ = "emails"
    __table_args__ = (
        Index("ix_emails_domain_verified", "domain", "verified"),
        UniqueConstraint("address", name="uq_emails_address"),
        UniqueConstraint("address_key", name="uq_emails_address_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(320))
    """Normalised: local part as given, ASCII host."""
    address_key: Mapped[str] = mapped_column(String(320), default=_address_key)
    """``address`` lower-cased: ``CTX@x.test`` and ``ctx@x.test`` are one address."""
    domain: Mapped[str] = mapped_column(String(253))
    """Registrable domain (ASCII)."""
    free_provider: Mapped[bool] = mapped_column(Boolean, default=False)
    primary: Mapped[bool] = mapped_column(Boolean, default=False)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    verified_at: Mapped[datetime | None]
    added_at: Mapped[datetime | None]
    """When it was added here (``None`` for imports and rows older than the column).
    Whoever held the domain then is whom the address was meant to reach."""
    unverified_at: Mapped[datetime | None]
    unverify_reason: Mapped[str | None] = mapped_column(String(32))
    """The verdict that unverified the address (e.g. ``redemption``)."""
    unverify_detail: Mapped[str | None] = mapped_column(Text)
    """The verdict's one-line reason, citing the evidence."""

    account: Mapped[Account] = relationship(back_populates="emails")

    @hybrid_property
    def trusted_since(self) -> datetime | None:
        """Since when this address has been trusted to reach its owner: the earlier of
        its adding and its verification. A domain registered after that moment has
        changed hands since (``reregistered``), even if the verification came later."""
        if self.added_at is not None and (
            self.verified_at is None or self.added_at < self.verified_at
        ):
            return self.added_at
        return self.verified_at

    @trusted_since.inplace.expression
    @classmethod
    def _trusted_since_expression(cls) -> ColumnElement[datetime | None]:
        return case(
            (
                and_(
                    cls.added_at.is_not(None),
                    or_(cls.verified_at.is_(None), cls.added_at < cls.verified_at),
                ),
                cls.added_at,
            ),
            else_=cls.verified_at,
        )


class Domain(Base):
    __tablename__ = "domains"

    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    next_due_at: Mapped[datetime | None] = mapped_column(index=True)
    """``None``: never checked, due at once."""
    last_checked_at: Mapped[datetime | None]
    last_verdict: Mapped[str | None] = mapped_column(String(32))
    last_reason: Mapped[str | None] = mapped_column(Text)
    registered_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    dangerous_at: Mapped[datetime | None]
    """The last check that found the domain dangerous; set once, it marks the domain as one
    that may have changed hands, so new addresses there need a login-bound link."""
    dangerous_verdict: Mapped[str | None] = mapped_column(String(32))
    nameservers: Mapped[list[str] | None] = mapped_column(JSON)
    """The registry's name servers at the last healthy check outside the auto-renew
    grace; a name sold in the grace keeps its dates but not its name servers."""
    mail_hosts: Mapped[list[str] | None] = mapped_column(JSON)
    """The mail hosts (MX targets, best preference first) read at the last healthy check
    outside the auto-renew grace: the grace rule compares them, and a check that does
    not read the MX checks these hosts' domains."""
    mail_hosts_read_at: Mapped[datetime | None]
    """When ``mail_hosts`` was read: the MX is read again ``Policy.interval`` later."""
    lease_until: Mapped[datetime | None]
    """A worker that claimed the domain holds it until then (distributed checks)."""


class ObservationRow(Base):
    __tablename__ = "observations"
    __table_args__ = (Index("ix_observations_domain_observed", "domain", "observed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain: Mapped[str] = mapped_column(ForeignKey("domains.name", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text)
    found: Mapped[bool | None] = mapped_column(Boolean)
    status: Mapped[list[str]] = mapped_column(default=list)
    registered_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    evidence: Mapped[str] = mapped_column(Text, default="")
    observed_at: Mapped[datetime]


class AddressHistory(Base):
    """An address lapsewatch once unverified; kept after the address is removed, so
    removing and re-adding it (or re-importing a case variant) cannot wash it clean."""

    __tablename__ = "address_history"

    address_key: Mapped[str] = mapped_column(String(320), primary_key=True)
    domain: Mapped[str] = mapped_column(String(253))
    unverified_at: Mapped[datetime]
    unverify_reason: Mapped[str] = mapped_column(String(32))


class Event(Base):
    """Append-only audit log of every security-relevant change."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(100))
    """Who or what: ``cycle``, ``import``, ``user:alice``, ``admin:bob``."""
    kind: Mapped[str] = mapped_column(String(64), index=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="SET NULL"), index=True
    )
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id", ondelete="SET NULL"))
    domain: Mapped[str | None] = mapped_column(String(253), index=True)
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    reason: Mapped[str | None] = mapped_column(Text)
    key: Mapped[str | None] = mapped_column(String(200), unique=True)
    """Idempotency key: the same change recorded twice is refused by the database."""


class Notice(Base):
    """A message to an account owner, queued until the mailer sends it."""

    __tablename__ = "notices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    to_address: Mapped[str | None] = mapped_column(String(320))
    """``None``: every address of the account that is verified when it is sent, so a
    notice never goes to an address unverified in the meantime."""
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    """While a run sends it: no other run takes it before then (no row lock is held
    while the mail server is talked to)."""
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="SET NULL"))
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id", ondelete="CASCADE"))
    """The one address a mail of the account side is for (a link, a security change):
    sent only if that address is still in the state the mail needs when it goes out,
    and dropped with the address (:func:`lapsewatch.notices.recipients`)."""
    client: Mapped[str | None] = mapped_column(String(100))
    """Who asked (the client's IP address), for a mail that says so (a reset link)."""


class Token(Base):
    """A single-use, expiring secret sent by mail (verify an address, reset a password).

    Only its SHA-256 is stored, so a database leak opens no account.
    """

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class RateLimitHit(Base):
    """One attempt under a rate limit; counted over a sliding window, pruned as it goes."""

    __tablename__ = "rate_limit_hits"
    __table_args__ = (Index("ix_rate_limit_hits_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(400))
    at: Mapped[datetime]


class ApiKey(Base):
    """A registry's key for the JSON API; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Webhook(Base):
    """Where to POST (HMAC-signed) when an address should be unverified."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    """The API key that made it, and the only one that sees or deletes it (``None``: the CLI)."""
    active: Mapped[bool] = mapped_column(Boolean, default=True)


WEBHOOK_MAX_ATTEMPTS = 12
"""Attempts after which a :class:`WebhookDelivery` is given up (about a day and a half of
retries, with ``lapsewatch.web.webhooks``' backoff): the sender stops there, and the
metrics count such a row as given up. Here, below both, so the metrics need not import web."""


class WebhookDelivery(Base):
    """Outbox row: one event to one webhook, retried until delivered."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_pair"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class ServerRate(Base):
    """What the check cycle learned of one server's rate limit (RDAP base URL host,
    WHOIS server, DNS resolver): the next cycle starts there (lapsewatch.pace)."""

    __tablename__ = "server_rates"

    server: Mapped[str] = mapped_column(String(300), primary_key=True)
    """``host:port``, as the pacer keys it."""
    source: Mapped[str] = mapped_column(String(20))
    """The source that last asked it (``rdap``, ``dns``, ``whois``, ``fastly``)."""
    rate: Mapped[float] = mapped_column(Float)
    """Requests per second, learned."""
    ceiling: Mapped[float | None] = mapped_column(Float)
    """The last rate the server refused (429, REFUSED); ``None``: it never refused."""
    updated_at: Mapped[datetime]


class MailHostVerdict(Base):
    """A mail-host domain's last safe verdict (lapsewatch.mail_hosts): it stands for
    every domain whose mail goes there for up to a week (``mail_hosts.kept_until``), so
    a popular mail host is not asked about at each check of each domain behind it."""

    __tablename__ = "mail_host_verdicts"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    verdict: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(20))
    checked_at: Mapped[datetime]
    good_until: Mapped[datetime] = mapped_column(index=True)
    """When it is asked again: a week on, or sooner when it is due as a domain would be."""
    registered_at: Mapped[datetime | None]
    """The registry's registration date with that verdict: a domain behind it compares
    it with when its MX was read (``mail_hosts.registered_since_read``)."""
