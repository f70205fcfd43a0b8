"""Password reset, which a lapsed domain cannot open, and how an account can be recovered.

A reset is only ever mailed to an address that is verified *now*, and a reset
link dies if its address is unverified before it is used. A request always gets
the same answer (:data:`~lapsewatch.accounts.results.RESET_REQUESTED`), so it
tells nobody which accounts or addresses exist.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from lapsewatch import notices
from lapsewatch.accounts import tokens
from lapsewatch.accounts.core import (
    _MAX_IDENTIFIER,
    AccountCore,
    _account,
    _account_by_username,
    _bump_generation,
    _clean,
    _clean_client,
    _email_by_address,
    _end_reset_links,
)
from lapsewatch.accounts.errors import AccountError, TokenInvalid
from lapsewatch.accounts.passwords import check_policy
from lapsewatch.accounts.results import (
    RESET_REQUESTED,
    PasswordReset,
    RecoveryOptions,
    ResetRequested,
    ResetTokenInfo,
    build_recovery_options,
)
from lapsewatch.accounts.tokens import TokenKind
from lapsewatch.domains import DomainError, FreeProviders, parse
from lapsewatch.names import address_key, username_key
from lapsewatch.store.events import SYSTEM, record, user_actor
from lapsewatch.store.models import Account, Email

__all__ = ["RecoveryService"]


class RecoveryService(AccountCore):
    """A forgotten password: reset links, and the ways an account can be recovered."""

    def request_password_reset(
        self, session: Session, identifier: str, *, client: str | None = None
    ) -> ResetRequested:
        """Mail a reset link to the verified addresses of the account named by
        ``identifier`` (a username or an address); always :data:`RESET_REQUESTED`.

        Named by one of its verified addresses, only that address gets the link;
        named by username or by an unverified address, every verified address
        does (the owner learns of the request; the lapsed address gets nothing).
        Limited per identifier, per account and per client; over a limit nothing
        is sent and the answer is the same. Every request becomes an event
        ``password_reset.requested`` whose ``after.outcome`` is ``sent``,
        ``no_verified_address``, ``unknown`` or ``rate_limited``.

        A link is queued in the outbox for each such address, as an intent: the
        outbox makes its token when it sends, so no usable token rests in the
        database, and SMTP time is never part of the answer (the ``deliver`` given
        to the service must not wait for the server:
        :class:`~lapsewatch.mail.sender.OutboxSender`).
        """
        now = self._clock()
        ident = _clean(identifier, _MAX_IDENTIFIER)
        client = _clean_client(client)
        limits = self.settings.limits
        allowed = client is None or self._limiter.allow(
            session,
            self._limiter.key("reset-client", client),
            limits.reset_per_client,
            now=now,
        )
        allowed = allowed and self._limiter.allow(
            session,
            self._limiter.key("reset-id", _identifier_key(ident, self._free)),
            limits.reset_per_identifier,
            now=now,
        )
        account, named = _find_for_reset(session, ident, self._free)
        to: list[str] = []
        if account is None:
            outcome = "rate_limited" if not allowed else "unknown"
        elif not allowed or not self._limiter.allow(
            session,
            self._limiter.key("reset-account", str(account.id)),
            limits.reset_per_account,
            now=now,
        ):
            outcome = "rate_limited"
        else:
            verified = [e for e in account.emails if e.verified]
            if named is not None and named.verified:
                verified = [named]
            for email in verified:
                self._queue_link(session, email, notices.PASSWORD_RESET, now, client=client)
                to.append(email.address)
            outcome = "sent" if to else "no_verified_address"
        record(
            session,
            at=now,
            actor=SYSTEM,
            kind="password_reset.requested",
            account_id=account.id if account is not None else None,
            email_id=named.id if named is not None else None,
            domain=named.domain if named is not None else None,
            after={
                "outcome": outcome,
                "identifier": ident[:100],
                "identifier_kind": "address" if "@" in ident else "username",
                "client": client,
                "recipients": to,
            },
        )
        return RESET_REQUESTED

    def check_reset_token(self, session: Session, token: str) -> ResetTokenInfo:
        """Validate a reset link before showing the form (raises a TokenInvalid subclass)."""
        now = self._clock()
        row = tokens.peek(session, (TokenKind.PASSWORD_RESET,), token, now=now)
        account = _account(session, row.account_id)
        email = session.get(Email, row.email_id) if row.email_id is not None else None
        if email is None or not email.verified or email.account_id != account.id:
            raise TokenInvalid(
                "this link was sent to an address that is no longer verified; ask for a new one"
            )
        return ResetTokenInfo(account.username, row.expires_at)

    def reset_password(self, session: Session, token: str, new_password: str) -> PasswordReset:
        """Set a new password through a reset link: once, and only while the address it
        was sent to is still verified. Every other open reset link dies with it."""
        now = self._clock()
        with self._probes() as side:  # no connection of the caller's held through Argon2
            row = tokens.peek(side, (TokenKind.PASSWORD_RESET,), token, now=now)
            found = _account(side, row.account_id)
            username = found.username
            addresses = tuple(e.address for e in found.emails)
        check_policy(  # a weak password keeps the link usable for a second try
            new_password,
            username=username,
            addresses=addresses,
            minimum=self.settings.min_password_length,
            maximum=self.settings.max_password_length,
        )
        new_hash = self._passwords.hash(new_password)
        outcome = self._redeem_reset(session, token, new_hash, now)
        if isinstance(outcome, AccountError):
            raise outcome  # the link is used up all the same (the caller commits)
        account = _account(session, outcome.account_id)
        self._queue_security_mails(session, account, "password.reset", outcome.via, now)
        return outcome

    def _redeem_reset(
        self, session: Session, token: str, new_hash: str, now: datetime
    ) -> AccountError | PasswordReset:
        try:
            row = tokens.consume(session, (TokenKind.PASSWORD_RESET,), token, now=now)
        except TokenInvalid as exc:
            return exc
        # Read again: the address may have been unverified while the new password was
        # hashed (and its links revoked: then consume above failed already).
        email = (
            session.get(Email, row.email_id, populate_existing=True)
            if row.email_id is not None
            else None
        )
        account = _account(session, row.account_id, fresh=True)
        if email is None or not email.verified or email.account_id != account.id:
            return TokenInvalid(
                "this link was sent to an address that is no longer verified; ask for a new one"
            )
        account.password_hash = new_hash
        _bump_generation(account)
        _end_reset_links(session, account.id, now)
        record(
            session,
            at=now,
            actor=user_actor(account.username),
            kind="password.reset",
            account_id=account.id,
            email_id=email.id,
            domain=email.domain,
            after={"via": email.address},
        )
        return PasswordReset(account.id, account.username, email.address)

    def recovery_options(self, session: Session, account_id: int) -> RecoveryOptions:
        """How this account can be recovered: for its logged-in owner or support staff.

        Never show this to an anonymous visitor (it would tell them the account
        exists); the public reset page shows :data:`RESET_REQUESTED` instead.
        """
        return build_recovery_options(_account(session, account_id))


# --------------------------------------------------------------------------- functions


def _identifier_key(identifier: str, free: FreeProviders | None) -> str:
    """What a reset request names, as the store matches it: the same limit for every
    spelling of one name or address."""
    if "@" not in identifier:
        return username_key(identifier)
    try:
        address = parse(identifier, free_providers=free).address
    except DomainError:
        return identifier
    return address_key(address) if address else identifier


def _find_for_reset(
    session: Session, identifier: str, free: FreeProviders | None
) -> tuple[Account | None, Email | None]:
    """The account an identifier names, and the address if it named one."""
    if "@" not in identifier:
        return _account_by_username(session, identifier), None
    try:
        address = parse(identifier, free_providers=free).address
    except DomainError:
        return None, None
    email = _email_by_address(session, address) if address else None
    return (email.account, email) if email is not None else (None, None)
