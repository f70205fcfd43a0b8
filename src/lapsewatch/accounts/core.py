"""What every account service shares: the wiring, rate limits, the security mails, lookups.

The job services (:mod:`~lapsewatch.accounts.addresses`,
:mod:`~lapsewatch.accounts.verification`, :mod:`~lapsewatch.accounts.login`,
:mod:`~lapsewatch.accounts.recovery`) each extend :class:`AccountCore`, so they
share one rate limiter and one ``deliver``, and
:class:`~lapsewatch.accounts.service.AccountService` combines them into one object.
Each method takes its caller's session (see :class:`AccountCore`).
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from lapsewatch import messages, notices
from lapsewatch.accounts import tokens
from lapsewatch.accounts.errors import AccountError, AccountNotFound, EmailNotFound, RateLimited
from lapsewatch.accounts.passwords import Passwords
from lapsewatch.accounts.ratelimit import RateLimiter
from lapsewatch.accounts.settings import AccountSettings, Limit
from lapsewatch.cycle.domaincheck import DomainChecker
from lapsewatch.dates import isoformat
from lapsewatch.domains import FreeProviders
from lapsewatch.names import address_key, username_key
from lapsewatch.schedule import Policy
from lapsewatch.store.db import make_sessionmaker, side_engine
from lapsewatch.store.events import SYSTEM, record_once
from lapsewatch.store.models import Account, Email
from lapsewatch.store.work import after_commit, transaction

__all__ = ["KEEP", "AccountCore", "Clock", "Deliver", "call"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
KEEP = (AccountError,)
"""What a caller's :func:`~lapsewatch.store.work.transaction` commits before re-raising:
a refusal whose record (a failed login, a limit hit) must stand."""
Deliver = Callable[[Sequence[int]], bool]
"""Send these queued notices now, or soon; false if they could not be (they stay queued
for the mail job). :class:`lapsewatch.mail.sender.OutboxSender` is the production one."""

_MAX_IDENTIFIER = 320

P = ParamSpec("P")
R = TypeVar("R")


def call(
    sessions: sessionmaker[Session],
    action: Callable[Concatenate[Session, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """``action(session, ...)`` as its caller runs it: in a transaction of its own,
    committed when it returns and when it raises an :class:`AccountError` (:data:`KEEP`:
    a refusal whose record must stand). The web app's ``WebContext.run``."""
    with transaction(sessions, keep=KEEP) as session:
        return action(session, *args, **kwargs)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AccountCore:
    """The state and helpers the job services share.

    Every public method takes the caller's session and never commits, rolls back or
    begins a transaction (:mod:`lapsewatch.store.work`): the caller (a web request, a
    command) owns the unit of work, and commits it also when the method raises an
    :class:`AccountError` (:data:`KEEP`), whose record (a failed login, a limit hit)
    must stand. Slow work (Argon2) runs before the method writes anything in that
    session, so no write lock waits on it; rate limits keep their own books
    (:class:`RateLimiter`), and mail is queued in the session and handed to
    ``deliver`` once the caller commits.
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
        # The limiter, and the reads before slow work, use connections of their own
        # (side_engine): the caller's session may hold one of the main pool meanwhile.
        self._side = side_engine(engine)
        side = make_sessionmaker(self._side)
        self._limiter = RateLimiter(settings.secret_key, side)
        self._probes = side
        """For reading before slow work (Argon2, a verification's domain check), so the
        caller's session holds no connection through it; never committed. What is
        decided on such a read is read again in the caller's session before it is acted
        on (a password changed meanwhile fails a login)."""

    def close(self) -> None:
        """Close the side connections (the main engine is the caller's)."""
        if self._side is not self.engine:
            self._side.dispose()

    # ------------------------------------------------------------------------- limits

    def _verification_allowed(self, session: Session, account_id: int, now: datetime) -> bool:
        return self._limiter.allow(
            session,
            self._limiter.key("verify-mail", str(account_id)),
            self.settings.limits.verification_mails_per_account,
            now=now,
        )

    def _reserve(
        self,
        session: Session,
        keys: Sequence[tuple[str, Limit]],
        now: datetime,
        *,
        event_kind: str,
    ) -> list[int]:
        """Reserve one hit per key before an expensive check (committed at once by the
        limiter); their ids. Over a limit: :class:`RateLimited`, and a key over its
        limit before this attempt is recorded in ``session`` once per window."""
        hits, over = self._limiter.reserve(session, keys, now=now)
        if over is None:
            return hits
        if over.blocked:
            limit = next(limit for key, limit in keys if key == over.key)
            bucket = int(now.timestamp() // max(limit.window.total_seconds(), 1))
            record_once(
                session,
                key=f"{event_kind}:{over.key}:{bucket}",
                at=now,
                actor=SYSTEM,
                kind=event_kind,
                after={"limit": over.key.split(":")[0], "until": isoformat(over.until)},
            )
        wait = max(1, int((over.until - now).total_seconds() // 60) + int(over.blocked))
        raise RateLimited(f"too many attempts; try again in {wait} minutes", over.until)

    def _refund(self, session: Session, hits: list[int]) -> None:
        """Give the reserved hits back once the caller commits: the attempt succeeded.
        (Not before: on SQLite this session may hold the write lock the limiter needs.)"""
        if hits:
            after_commit(session, functools.partial(self._limiter.refund, hits))

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
    ) -> None:
        """Queue the mails telling every verified address (and a removed one) of a
        change. Each goes out only if its address is still verified then."""
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
        # The removed address, by address (its row goes with this transaction), and
        # only if verified: a lapsed one may be read by someone else now.
        if removed is not None and any(e.address == removed and e.verified for e in account.emails):
            add(removed, None)
        self._send_after_commit(session, ids)

    def _queue_link(
        self,
        session: Session,
        email: Email,
        kind: str,
        now: datetime,
        *,
        client: str | None = None,
    ) -> None:
        """Queue a link for ``email`` (``verify_email``, ``password_reset``). The outbox
        makes the token when it sends (none rests in the database)."""
        notice = notices.queue(
            session,
            account_id=email.account_id,
            kind=kind,
            now=now,
            email_id=email.id,
            client=client,
        )
        self._send_after_commit(session, [notice.id])

    def _send_after_commit(self, session: Session, ids: Sequence[int]) -> None:
        """Hand queued notices to ``deliver`` once the caller commits (never if it rolls
        back). A failure leaves them queued: the mail job sends them later."""
        if ids and self._deliver_now is not None:
            after_commit(session, functools.partial(self._deliver, list(ids)))

    def _deliver(self, ids: list[int]) -> None:
        """After the commit; an exception is logged there, and the commit stands."""
        assert self._deliver_now is not None
        if not self._deliver_now(ids):
            log.warning("notices %s stay queued for the mail job", ids)


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


def _account(
    session: Session, account_id: int, *, lock: bool = False, fresh: bool = False
) -> Account:
    """The account; ``fresh`` (and ``lock``) read its row again: the session may hold an
    object read before slow work, while another request changed it."""
    # FOR NO KEY UPDATE: a row that refers to the account (a token the outbox makes)
    # may still be inserted meanwhile; FOR UPDATE deadlocked against it.
    account = session.get(
        Account,
        account_id,
        with_for_update={"key_share": True} if lock else None,
        populate_existing=lock or fresh,
    )
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


def _end_reset_links(session: Session, account_id: int, now: datetime) -> None:
    """Every open reset link of the account dies (its password changed): those sent are
    revoked, those not sent yet are dropped from the outbox."""
    # The queued ones first: a run making one's token now holds its notice, so this
    # waits for that token to be committed, and the revocation below then sees it.
    notices.forget_resets(session, account_id)
    tokens.revoke(session, (tokens.TokenKind.PASSWORD_RESET,), account_id=account_id, now=now)


def _bump_generation(account: Account) -> int:
    """End every session made before now (the web app's session stamp includes it)."""
    account.session_generation = (account.session_generation or 0) + 1
    return account.session_generation
