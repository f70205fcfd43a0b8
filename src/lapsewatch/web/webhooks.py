"""Webhooks: tell a registry, by a signed HTTP POST, that an address was unverified.

Built as an outbox so nothing is lost and nothing blocks the check cycle:

1. :func:`deliver_webhooks` first *queues* one ``webhook_deliveries`` row per
   (active webhook, ``email.unverified`` event since the webhook was made) that
   the webhook may see. The pair is unique in the database, so two runs at once
   queue each pair once.
2. It then *claims* each due row (a conditional update, so two runs never send
   the same row at once), POSTs it, and records the outcome. A failure is
   retried with exponential backoff (1 min, 2, 4 … capped at 6 h) and given up
   after :data:`MAX_ATTEMPTS`.

Run it periodically: the ``lapsewatch.deliver_webhooks`` job (beat, every 60 s) or
``lapsewatch admin deliver-webhooks`` from a timer. Receivers must check the signature:
``X-Lapsewatch-Signature: sha256=<hex>`` is HMAC-SHA256 with the webhook's
secret over ``"<X-Lapsewatch-Timestamp>." + raw body`` (see
:func:`verify_signature`), and should refuse old timestamps (replays).
Delivery is at least once: deduplicate on ``event_id``.

Webhooks must not become a way to make this server talk to itself or its
network (SSRF): the host of a webhook URL is resolved when it is registered and
again at every delivery, and every address it resolves to must be public — not
loopback, private, link-local, CGNAT (100.64/10), multicast, unspecified or
reserved, in IPv4 or IPv6 (also embedded: ``::ffff:127.0.0.1``, 6to4, NAT64).
The delivery then connects to the very address it checked (the name goes in
the ``Host`` header and TLS SNI), so a DNS answer that changes between check and
connection (rebinding) reaches nothing else. An operator may allow internal
networks explicitly (``LAPSEWATCH_WEBHOOK_ALLOW``, CIDRs). A webhook made
through the API belongs to its API key: only that key sees or stops it.

A delivery names an account and its address, so it goes only where that is
already known: a webhook made through the API hears only of the accounts its
key owns (``accounts.owner`` is ``api:<key name>``), never of a web account or
another key's; a webhook the operator made on the command line hears of all.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx
from sqlalchemy import ColumnElement, Engine, and_, exists, literal, or_, select, update
from sqlalchemy.orm import Session

from lapsewatch import metrics
from lapsewatch.accounts.importer import API_OWNER_PREFIX
from lapsewatch.dates import isoformat
from lapsewatch.store.db import dialect_insert, make_sessionmaker
from lapsewatch.store.models import (
    WEBHOOK_MAX_ATTEMPTS,
    Account,
    ApiKey,
    Email,
    Event,
    Webhook,
    WebhookDelivery,
)
from lapsewatch.tls import client_context
from lapsewatch.web.config import IPNetwork

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "EVENT_KIND",
    "MAX_ATTEMPTS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliverySummary",
    "IPAddress",
    "InvalidWebhookUrl",
    "NewWebhook",
    "Target",
    "WebhookInfo",
    "add_webhook",
    "backoff",
    "check_target",
    "deliver_webhooks",
    "list_webhooks",
    "refused_because",
    "remove_webhook",
    "resolve_host",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

EVENT_KIND = "email.unverified"
SIGNATURE_HEADER = "X-Lapsewatch-Signature"
TIMESTAMP_HEADER = "X-Lapsewatch-Timestamp"
EVENT_HEADER = "X-Lapsewatch-Event"
DELIVERY_HEADER = "X-Lapsewatch-Delivery"
MAX_ATTEMPTS = WEBHOOK_MAX_ATTEMPTS
"""About a day and a half of retries before a delivery is given up (defined in the store)."""
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=6)
CLAIM = timedelta(minutes=5)
"""A claimed row is due again after this if its sender died mid-request."""
MAX_URL = 2000


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class InvalidWebhookUrl(ValueError):
    pass


@dataclass(frozen=True)
class WebhookInfo:
    id: int
    url: str
    active: bool
    created_at: datetime
    api_key_id: int | None
    """The API key that made it (``None``: the command line)."""


@dataclass(frozen=True)
class NewWebhook(WebhookInfo):
    secret: str
    """Shown once, when the webhook is made; signs every delivery."""


@dataclass(frozen=True)
class DeliverySummary:
    queued: int = 0
    delivered: int = 0
    failed: int = 0
    """Attempts that failed and will be retried."""
    gave_up: int = 0


# ------------------------------------------------------------------------ registration


def check_url(url: str) -> str:
    """An absolute ``http(s)://`` URL with a host, or :class:`InvalidWebhookUrl`."""
    url = url.strip()
    if not url or len(url) > MAX_URL or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidWebhookUrl("a webhook URL is an http:// or https:// URL without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"not a usable URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise InvalidWebhookUrl("a webhook URL is an http:// or https:// URL with a host")
    return url


# ------------------------------------------------------------------------ SSRF rules


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (IP literals in any form the C library
    accepts, ``0x7f000001`` and ``2130706433`` included, resolve to themselves)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.teredo is not None:
        return address.teredo[1]
    return None


def refused_because(address: IPAddress) -> str | None:
    """Why a webhook may not reach ``address`` (``None``: a public address)."""
    for candidate in (address, _embedded_ipv4(address)):
        if candidate is None:
            continue
        if candidate.is_loopback:
            return "loopback"
        if candidate.is_unspecified:
            return "unspecified"
        if candidate.is_link_local:
            return "link-local"
        if candidate.is_multicast:
            return "multicast"
        if isinstance(candidate, ipaddress.IPv4Address) and candidate in _CGNAT:
            return "shared (CGNAT)"
        if candidate.is_private or (
            isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local
        ):
            return "private"
        if candidate.is_reserved:
            return "reserved"
        if not candidate.is_global:
            return "non-public"
    return None


def _allowed(address: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    embedded = _embedded_ipv4(address)
    return any(address in net or (embedded is not None and embedded in net) for net in allow)


@dataclass(frozen=True)
class Target:
    """Where a delivery connects: the checked address, and the name it stands for."""

    host: str
    port: int
    address: IPAddress


def _parts(url: str) -> tuple[SplitResult, str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts, host, port


def check_target(url: str, *, allow: Sequence[IPNetwork] = ()) -> Target:
    """Resolve the URL's host; every address must be public (or in ``allow``).

    Raises :class:`InvalidWebhookUrl` saying why; nothing is connected to.
    """
    _, host, port = _parts(url)
    try:
        addresses = resolve_host(host, port)
    except (OSError, UnicodeError, ValueError) as exc:
        raise InvalidWebhookUrl(f"the host {host!r} does not resolve: {exc}") from None
    if not addresses:
        raise InvalidWebhookUrl(f"the host {host!r} does not resolve")
    for address in addresses:
        if _allowed(address, allow):
            continue
        reason = refused_because(address)
        if reason is not None:
            raise InvalidWebhookUrl(
                f"the host {host!r} resolves to {address}, a {reason} address: webhooks only "
                "go to public addresses (an operator may allow internal networks with "
                "LAPSEWATCH_WEBHOOK_ALLOW)"
            )
    return Target(host, port, addresses[0])


def _pinned(url: str, target: Target) -> tuple[str, str, dict[str, Any]]:
    """The URL with its host replaced by the checked address, the ``Host`` header value,
    and the request extensions (TLS SNI and certificate checks use the name)."""
    parts, host, _ = _parts(url)
    literal_host = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    netloc = literal_host + (f":{parts.port}" if parts.port else "")
    if "@" in parts.netloc:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, host_header, extensions


def add_webhook(
    session: Session,
    url: str,
    *,
    now: datetime,
    api_key_id: int | None = None,
    allow: Sequence[IPNetwork] = (),
) -> NewWebhook:
    """Register ``url`` for ``api_key_id`` (``None``: made by the operator's command line).

    The URL's host is resolved (and refused if internal) before the first statement, so
    a caller that opens its transaction just for this holds nothing while DNS answers."""
    url = check_url(url)
    check_target(url, allow=allow)
    secret = "whsec_" + secrets.token_urlsafe(32)
    hook = Webhook(url=url, secret=secret, created_at=now, active=True, api_key_id=api_key_id)
    session.add(hook)
    session.flush()
    return NewWebhook(hook.id, hook.url, True, hook.created_at, api_key_id, secret)


def list_webhooks(
    session: Session, *, api_key_id: int | None = None, include_inactive: bool = False
) -> list[WebhookInfo]:
    """The webhooks of ``api_key_id``; ``None`` (the operator): everybody's."""
    query = select(Webhook).order_by(Webhook.id)
    if api_key_id is not None:
        query = query.where(Webhook.api_key_id == api_key_id)
    if not include_inactive:
        query = query.where(Webhook.active.is_(True))
    return [
        WebhookInfo(h.id, h.url, h.active, h.created_at, h.api_key_id)
        for h in session.scalars(query)
    ]


def remove_webhook(session: Session, webhook_id: int, *, api_key_id: int | None = None) -> bool:
    """Deactivate (kept for the delivery history); ``False`` if no such active webhook
    (of ``api_key_id``, when given: another key's webhook is "not found")."""
    hook = session.get(Webhook, webhook_id)
    if hook is None or not hook.active:
        return False
    if api_key_id is not None and hook.api_key_id != api_key_id:
        return False
    hook.active = False
    return True


# --------------------------------------------------------------------------- signing


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Lapsewatch-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    *,
    timestamp: str,
    body: bytes,
    signature: str,
    now: datetime | None = None,
    tolerance: timedelta = timedelta(minutes=5),
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    if not timestamp.isdigit():
        return False
    sent = int(timestamp)
    now_ts = (now or datetime.now(UTC)).timestamp()
    if abs(now_ts - sent) > tolerance.total_seconds():
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)


# -------------------------------------------------------------------------- delivery


def backoff(attempts: int) -> timedelta:
    """Wait before the next try after ``attempts`` failed ones: 1, 2, 4 … minutes, ≤ 6 h."""
    wait: timedelta = FIRST_RETRY * (2 ** max(attempts - 1, 0))
    return min(wait, LONGEST_RETRY)


def queue_deliveries(session: Session, *, now: datetime) -> int:
    """One row per active webhook and unverification since it was made that the webhook
    may see (:func:`_may_see`); never twice."""
    candidates = (
        select(Webhook.id, Event.id, literal(0), literal(now, WebhookDelivery.next_attempt_at.type))
        .select_from(Webhook)
        .join(Event, and_(Event.kind == EVENT_KIND, Event.at >= Webhook.created_at))
        .outerjoin(ApiKey, ApiKey.id == Webhook.api_key_id)
        .outerjoin(Account, Account.id == Event.account_id)
        .where(
            Webhook.active.is_(True),
            _may_see(),
            ~exists().where(
                WebhookDelivery.webhook_id == Webhook.id, WebhookDelivery.event_id == Event.id
            ),
        )
    )
    columns = ["webhook_id", "event_id", "attempts", "next_attempt_at"]
    statement = (
        dialect_insert(session.get_bind().dialect.name, WebhookDelivery)
        .from_select(columns, candidates)
        .on_conflict_do_nothing(index_elements=["webhook_id", "event_id"])
    )
    return len(session.execute(statement.returning(WebhookDelivery.id)).all())


def _may_see() -> ColumnElement[bool]:
    """Whether a webhook (joined to its API key) may be told of an event (joined to its
    account): the operator's webhooks (no key) hear of every account; a key's only of
    the accounts that key owns. An event of no account (or of a deleted one) goes to
    the operator's webhooks only: a payload names the account and its address, which
    no key may learn of an account it does not own (a web user's, the admin's, another
    registry's)."""
    return or_(
        Webhook.api_key_id.is_(None),
        and_(
            Account.id.is_not(None),
            ApiKey.id.is_not(None),
            Account.owner == literal(API_OWNER_PREFIX) + ApiKey.name,
        ),
    )


def _payload(session: Session, delivery: WebhookDelivery) -> dict[str, Any] | None:
    event = session.get(Event, delivery.event_id)
    if event is None:
        return None
    email = session.get(Email, event.email_id) if event.email_id is not None else None
    account = session.get(Account, event.account_id) if event.account_id is not None else None
    before, after = event.before or {}, event.after or {}
    return {
        "type": event.kind,
        "event_id": event.id,
        "delivery_id": delivery.id,
        "occurred_at": isoformat(event.at),
        "address": email.address if email is not None else None,
        "username": account.username if account is not None else None,
        "domain": event.domain,
        "verdict": after.get("verdict"),
        "reason": event.reason,
        "verified_at": before.get("verified_at"),
        "domain_registered_at": after.get("registered_at"),
        "domain_expires_at": after.get("expires_at"),
    }


def _claim(session: Session, delivery_id: int, due_at: datetime, now: datetime) -> bool:
    claimed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.next_attempt_at == due_at,
            WebhookDelivery.delivered_at.is_(None),
        )
        .values(next_attempt_at=now + CLAIM)
        .execution_options(synchronize_session=False)
    )
    return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]


def _post(
    client: httpx.Client,
    url: str,
    secret: str,
    body: bytes,
    now: datetime,
    delivery_id: int,
    allow: Sequence[IPNetwork],
) -> str | None:
    """POST once, to the address just checked; ``None`` on a 2xx answer, else why not."""
    try:
        target = check_target(url, allow=allow)
    except InvalidWebhookUrl as exc:
        return f"refused: {exc}"[:500]
    pinned, host_header, extensions = _pinned(url, target)
    timestamp = int(now.timestamp())
    headers = {
        "Host": host_header,
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: str(timestamp),
        EVENT_HEADER: EVENT_KIND,
        DELIVERY_HEADER: str(delivery_id),
    }
    try:
        response = client.post(pinned, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


def deliver_webhooks(
    engine: Engine,
    *,
    now: datetime | None = None,
    client: httpx.Client | None = None,
    limit: int = 200,
    timeout: float = 10.0,
    max_attempts: int = MAX_ATTEMPTS,
    allow: Sequence[IPNetwork] = (),
) -> DeliverySummary:
    """Queue new deliveries, then send up to ``limit`` due ones (one pass; call it often).

    ``allow``: internal networks the operator lets webhooks reach (see the module doc).
    Webhooks of a revoked API key are not delivered, and a key's webhook gets only the
    events of accounts that key owns (see :func:`_may_see`).
    """
    now = now or datetime.now(UTC)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        queued = queue_deliveries(session, now=now)
    with sessions() as session:
        due = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .outerjoin(ApiKey, ApiKey.id == Webhook.api_key_id)
            .outerjoin(Event, Event.id == WebhookDelivery.event_id)
            .outerjoin(Account, Account.id == Event.account_id)
            .where(
                Webhook.active.is_(True),
                or_(Webhook.api_key_id.is_(None), ApiKey.revoked_at.is_(None)),
                _may_see(),  # again: the account may have changed hands since it was queued
                WebhookDelivery.delivered_at.is_(None),
                WebhookDelivery.attempts < max_attempts,
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
        ).all()
    own_client = client is None
    http = client or httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        headers={"User-Agent": "lapsewatch-webhooks/1"},
        verify=client_context("httpcore"),
    )
    delivered = failed = gave_up = 0
    try:
        for delivery_id, due_at in due:
            with sessions.begin() as session:
                if not _claim(session, delivery_id, due_at, now):
                    continue  # another sender has it
                delivery = session.get(WebhookDelivery, delivery_id)
                assert delivery is not None
                hook = session.get(Webhook, delivery.webhook_id)
                assert hook is not None
                payload = _payload(session, delivery)
                url, secret = hook.url, hook.secret
            body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
            error = (
                "the event no longer exists"
                if payload is None
                else _post(http, url, secret, body, now, delivery_id, allow)
            )
            with sessions.begin() as session:
                delivery = session.get(WebhookDelivery, delivery_id)
                assert delivery is not None
                delivery.attempts += 1
                if error is None:
                    delivery.delivered_at = now
                    delivery.last_error = None
                    delivered += 1
                    continue
                delivery.last_error = error
                delivery.next_attempt_at = now + backoff(delivery.attempts)
                if delivery.attempts >= max_attempts or payload is None:
                    delivery.attempts = max(delivery.attempts, max_attempts)
                    gave_up += 1
                    log.warning("gave up delivering %s to %s: %s", delivery_id, url, error)
                else:
                    failed += 1
    finally:
        if own_client:
            http.close()
        metrics.count_webhooks(delivered, failed, gave_up)
    return DeliverySummary(queued, delivered, failed, gave_up)
