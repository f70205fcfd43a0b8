"""What every account service shares: the wiring, rate limits, the security mails, lookups.

The job services (:mod:`~lapsewatch.accounts.addresses`,
:mod:`~lapsewatch.accounts.verification`, :mod:`~lapsewatch.accounts.login`,
:mod:`~lapsewatch.accounts.recovery`) each extend :class:`AccountCore`, so they
share one session factory, one rate limiter and one mailer, and
:class:`~lapsewatch.accounts.service.AccountService` combines them into one object.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from lapsewatch import messages
from lapsewatch.accounts.errors import AccountNotFound, EmailNotFound, RateLimited
from lapsewatch.accounts.passwords import Passwords
from lapsewatch.accounts.ratelimit import RateLimiter
from lapsewatch.accounts.settings import AccountSettings, Limit
from lapsewatch.accounts.tokens import TokenKind
from lapsewatch.cycle.domaincheck import DomainChecker
from lapsewatch.dates import isoformat
from lapsewatch.domains import FreeProviders
from lapsewatch.names import address_key, username_key
from lapsewatch.schedule import Policy
from lapsewatch.smtp import Mail, Mailer, MailError
from lapsewatch.store.db import make_sessionmaker
from lapsewatch.store.events import SYSTEM, record_once
from lapsewatch.store.models import Account, AddressHistory, Domain, Email

__all__ = ["AccountCore", "Clock"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_MAX_IDENTIFIER = 320


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AccountCore:
    """The state and helpers the job services share; each public method runs its own
    short transactions, and slow work (Argon2, a domain check, SMTP) happens outside them."""

    def __init__(
        self,
        engine: Engine,
        settings: AccountSettings,
        *,
        mailer: Mailer,
        checker: DomainChecker | None = None,
        policy: Policy | None = None,
        clock: Clock = _utc_now,
        passwords: Passwords | None = None,
        free_providers: FreeProviders | None = None,
    ) -> None:
        """``checker=None`` skips the check at verification (the domain is left due at once)."""
        self.engine = engine
        self.settings = settings
        self.mailer = mailer
        self._checker = checker
        self._policy = policy or Policy()
        self._clock = clock
        self._passwords = passwords or Passwords()
        self._free = free_providers
        self._sessions = make_sessionmaker(engine)
        self._limiter = RateLimiter(settings.secret_key)

    # ------------------------------------------------------------------------- limits

    def _verification_allowed(self, session: Session, account_id: int, now: datetime) -> bool:
        return self._limiter.allow(
            session,
            self._limiter.key("verify-mail", str(account_id)),
            self.settings.limits.verification_mails_per_account,
            now=now,
        )

    def _blocked(
        self,
        session: Session,
        keys: Sequence[tuple[str, Limit]],
        now: datetime,
        *,
        event_kind: str,
    ) -> RateLimited | None:
        """A :class:`RateLimited` if any key is over its limit (recorded once per window)."""
        for key, limit in keys:
            until = self._limiter.blocked_until(session, key, limit, now=now)
            if until is None:
                continue
            bucket = int(now.timestamp() // max(limit.window.total_seconds(), 1))
            record_once(
                session,
                key=f"{event_kind}:{key}:{bucket}",
                at=now,
                actor=SYSTEM,
                kind=event_kind,
                after={"limit": key.split(":")[0], "until": isoformat(until)},
            )
            wait = max(1, int((until - now).total_seconds() // 60) + 1)
            return RateLimited(f"too many attempts; try again in {wait} minutes", until)
        return None

    def _reserve(
        self,
        session: Session,
        keys: Sequence[tuple[str, Limit]],
        now: datetime,
        *,
        event_kind: str,
    ) -> tuple[list[int], RateLimited | None]:
        """Refuse if over a limit, else record one hit per key (committed by the caller
        before the expensive check, then confirmed by :meth:`_recount`)."""
        self._limiter.serialize(session, [key for key, _ in keys])
        blocked = self._blocked(session, keys, now, event_kind=event_kind)
        if blocked is not None:
            return [], blocked
        return [self._limiter.hit(session, key, limit, now=now) for key, limit in keys], None

    def _recount(
        self, keys: Sequence[tuple[str, Limit]], hits: list[int], now: datetime
    ) -> RateLimited | None:
        """After the hits are committed: refuse (and give them back) if racing attempts
        took the key over its limit."""
        with self._sessions.begin() as session:
            over = [
                limit for key, limit in keys if self._limiter.over(session, key, limit, now=now)
            ]
            if not over:
                return None
            self._limiter.refund(session, hits)
        wait = max(1, int(max(limit.window for limit in over).total_seconds() // 60))
        return RateLimited(f"too many attempts; try again in {wait} minutes", now + over[0].window)

    # -------------------------------------------------------------------------- mails

    def _security_mails(
        self, account: Account, kind: str, detail: str, now: datetime, *, skip: str | None = None
    ) -> list[Mail]:
        """The mails telling every verified address (and a removed one) of a change."""
        targets = [e.address for e in account.emails if e.verified and e.address != skip]
        if kind == "email.removed" and detail not in targets:
            targets.append(detail)
        url = messages.link(self.settings.base_url, messages.SECURITY_PATH)
        return [
            messages.security_change_mail(
                address=address,
                username=account.username,
                kind=kind,
                detail=detail,
                when=now,
                security_url=url,
            )
            for address in targets
        ]

    def _send_all(self, mails: Sequence[Mail]) -> None:
        for mail in mails:
            self._send(mail)

    def _send(self, mail: Mail) -> bool:
        try:
            self.mailer.send(mail)
        except MailError as exc:
            log.warning("could not send %s mail: %s", mail.kind, exc)
            return False
        return True


# --------------------------------------------------------------------------- functions


def _clean(text: str | None, limit: int) -> str:
    """Untrusted text as we store and compare it: no control characters (PostgreSQL
    refuses NUL in text), no surrounding space, bounded length."""
    text = text if isinstance(text, str) else ""
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cs")).strip()[:limit]


def _clean_client(client: str | None) -> str | None:
    """The client (an IP address, as the web app saw it), or ``None`` if not given."""
    if client is None:
        return None
    return _clean(client, 100) or None


def _account(session: Session, account_id: int, *, lock: bool = False) -> Account:
    account = session.get(Account, account_id, with_for_update=lock)
    if account is None:
        raise AccountNotFound("this account does not exist")
    return account


def _own_email(account: Account, email_id: int) -> Email:
    email = next((e for e in account.emails if e.id == email_id), None)
    if email is None:
        raise EmailNotFound("no such address on your account")
    return email


def _account_by_username(session: Session, username: str) -> Account | None:
    """By key: ``Alice`` is ``alice`` (one account per key, a unique index)."""
    if not username:
        return None
    return session.scalar(select(Account).where(Account.username_key == username_key(username)))


def _email_by_address(session: Session, address: str) -> Email | None:
    """By key: ``CTX@x.test`` is ``ctx@x.test`` (one row per key, a unique index)."""
    return session.scalar(select(Email).where(Email.address_key == address_key(address)))


def _verification_kind(session: Session, email: Email) -> TokenKind:
    """A login-bound link for an address that may now be read by someone else: one
    lapsewatch unverified (even if it was removed since), or any address on a
    domain once found dangerous. A plain link otherwise."""
    if email.unverified_at is not None:
        return TokenKind.REVERIFY_EMAIL
    if session.get(AddressHistory, address_key(email.address)) is not None:
        return TokenKind.REVERIFY_EMAIL
    domain = session.get(Domain, email.domain)
    if domain is not None and domain.dangerous_at is not None:
        return TokenKind.REVERIFY_EMAIL
    return TokenKind.VERIFY_EMAIL


def _bump_generation(account: Account) -> int:
    """End every session made before now (the web app's session stamp includes it)."""
    account.session_generation = (account.session_generation or 0) + 1
    return account.session_generation
