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

from lapsewatch import messages, notices
from lapsewatch.accounts.errors import AccountNotFound, EmailNotFound, RateLimited
from lapsewatch.accounts.passwords import Passwords
from lapsewatch.accounts.ratelimit import RateLimiter
from lapsewatch.accounts.settings import AccountSettings, Limit
from lapsewatch.cycle.domaincheck import DomainChecker
from lapsewatch.dates import isoformat
from lapsewatch.domains import FreeProviders
from lapsewatch.names import address_key, username_key
from lapsewatch.schedule import Policy
from lapsewatch.store.db import make_sessionmaker
from lapsewatch.store.events import SYSTEM, record_once
from lapsewatch.store.models import Account, Email

__all__ = ["AccountCore", "Clock", "Deliver"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Deliver = Callable[[Sequence[int]], bool]
"""Send these queued notices now, or soon; false if they could not be (they stay queued
for the mail job). :class:`lapsewatch.mail.sender.OutboxSender` is the production one."""

_MAX_IDENTIFIER = 320


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AccountCore:
    """The state and helpers the job services share; each public method runs its own
    short transactions, and slow work (Argon2, a domain check) happens outside them.

    Mail is queued in the outbox inside the transaction that decides it (a crash loses
    nothing), then handed to ``deliver`` once that transaction has committed.
    """

    def __init__(
        self,
        engine: Engine,
        settings: AccountSettings,
        *,
        deliver: Deliver | None = None,
        checker: DomainChecker | None = None,
        policy: Policy | None = None,
        clock: Clock = _utc_now,
        passwords: Passwords | None = None,
        free_providers: FreeProviders | None = None,
    ) -> None:
        """``checker=None`` skips the check at verification (the domain is left due at
        once); ``deliver=None`` leaves the mail to the mail job (``lapsewatch notify``)."""
        self.engine = engine
        self.settings = settings
        self._deliver_now = deliver
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

    def _queue_security_mails(
        self,
        session: Session,
        account: Account,
        kind: str,
        detail: str,
        now: datetime,
        *,
        skip: str | None = None,
    ) -> list[int]:
        """Queue the mails telling every verified address (and a removed one) of a
        change; their notice ids. Each goes out only if its address is still verified."""
        url = messages.link(self.settings.base_url, messages.SECURITY_PATH)
        ids: list[int] = []

        def add(address: str, email_id: int | None) -> None:
            mail = messages.security_change_mail(
                address=address,
                username=account.username,
                kind=kind,
                detail=detail,
                when=now,
                security_url=url,
            )
            notice = notices.queue(
                session,
                account_id=account.id,
                kind=mail.kind,
                now=now,
                subject=mail.subject,
                body=mail.body,
                to_address=None if email_id is not None else address,
                email_id=email_id,
            )
            ids.append(notice.id)

        removed = detail if kind == "email.removed" else None
        for email in account.emails:
            if email.verified and email.address not in (skip, removed):
                add(email.address, email.id)
        if removed is not None:  # its row goes with this transaction: by address
            add(removed, None)
        return ids

    def _queue_link(
        self,
        session: Session,
        email: Email,
        kind: str,
        now: datetime,
        *,
        client: str | None = None,
    ) -> int:
        """Queue a link for ``email`` (``verify_email``, ``password_reset``); its notice
        id. The outbox makes the token when it sends (none rests in the database)."""
        notice = notices.queue(
            session,
            account_id=email.account_id,
            kind=kind,
            now=now,
            email_id=email.id,
            client=client,
        )
        return notice.id

    def _deliver(self, ids: Sequence[int]) -> bool:
        """Hand committed notices to ``deliver``; whether they went (or are on their way).
        A failure leaves them queued: the mail job sends them later."""
        if not ids or self._deliver_now is None:
            return True
        try:
            return self._deliver_now(ids)
        except Exception:  # the mail is queued; the request it came from stands
            log.exception("delivering notices %s failed; the mail job will send them", ids)
            return False


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


def _bump_generation(account: Account) -> int:
    """End every session made before now (the web app's session stamp includes it)."""
    account.session_generation = (account.session_generation or 0) + 1
    return account.session_generation
