"""Verifying an address: mailing a new link, redeeming it, and checking its domain at once.

The rules against the ``ctx`` attack that live here: a verification link
issued before the address was unverified is dead; a login-bound link works only
while its owner is logged in, so whoever now reads a lapsed domain's mail
cannot re-verify it; and the domain is checked the moment an address is
verified, a registration date newer than the one the store saw before being a
re-registration (the verification is refused). This is the one job service
that calls the cycle (:mod:`lapsewatch.cycle.apply`, :mod:`lapsewatch.cycle.due`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime

from sqlalchemy.orm import Session

from lapsewatch import notices
from lapsewatch.accounts import tokens
from lapsewatch.accounts.core import AccountCore, _account, _own_email
from lapsewatch.accounts.errors import (
    AccountError,
    AlreadyVerified,
    CheckUnavailable,
    LoginRequired,
    RateLimited,
    TokenInvalid,
)
from lapsewatch.accounts.results import EmailVerified, VerificationSent
from lapsewatch.accounts.tokens import TokenKind
from lapsewatch.cycle.apply import CheckResult, apply_result, reregistered_since, unverify_email
from lapsewatch.cycle.due import DueDomain, due_now, select_due
from lapsewatch.dates import isoformat
from lapsewatch.store.events import SYSTEM, record, user_actor
from lapsewatch.store.models import Domain, Email
from lapsewatch.store.work import has_written, savepoint
from lapsewatch.verdict import Verdict

__all__ = ["VerificationService", "reregistered_since"]

log = logging.getLogger(__name__)


class VerificationService(AccountCore):
    """Verification links: asked for again, redeemed, and the domain checked right away."""

    def request_reverification(
        self, session: Session, account_id: int, email_id: int
    ) -> VerificationSent:
        """Mail a verification link to that address of the logged-in account.

        Also for an address never verified (a lost first link). For an address
        lapsewatch unverified, the link only works while its owner is logged in
        (see :meth:`verify_email`).
        """
        now = self._clock()
        account = _account(session, account_id)
        email = _own_email(account, email_id)
        if email.verified:
            raise AlreadyVerified("this address is already verified")
        if not self._verification_allowed(session, account.id, now):
            raise RateLimited("too many verification mails; try again later")
        kind = tokens.verification_kind(session, email)
        tokens.revoke_verification(session, email, now=now)
        record(
            session,
            at=now,
            actor=user_actor(account.username),
            kind="email.verification_requested",
            account_id=account.id,
            email_id=email.id,
            domain=email.domain,
            after={"address": email.address, "kind": kind.value},
        )
        self._queue_link(session, email, notices.VERIFY_EMAIL, now)
        return VerificationSent(email_id, email.address)

    def verify_email(
        self, session: Session, token: str, *, session_account_id: int | None = None
    ) -> EmailVerified:
        """Redeem a verification link, after checking the address's domain.

        ``session_account_id`` is the logged-in account, if any: a
        re-verification link requires it to be the owner (:class:`LoginRequired`).

        The address stays unverified while its domain is checked: the link is
        first redeemed in a dry run, a transaction of its own that is always rolled
        back (it only learns the domain, and holds no lock during the check), then
        the domain is checked, then the link is redeemed for real in the caller's
        session together with the check's result. Call it before writing anything
        in that session: the domain check talks to the network. Committing the
        verification before the check would let whoever reads the domain's mail
        ask for a password reset during the check (issue #10, H2). If the
        domain has lapsed the address is unverified again in that same
        transaction (``verified=False`` in the result); a registration newer than
        the one the store saw before refuses the verification. If the check gives
        no registration date while the store knows one, nothing is redeemed
        (:class:`CheckUnavailable`: the link works again later); if the store knows
        none, the verification stands and the cycle checks the domain at once.
        """
        now = self._clock()
        due: list[DueDomain] = []
        known_registration: datetime | None = None
        with self._dry_run(session) as dry:
            probe = self._redeem_verification(dry, token, session_account_id, now)
            if isinstance(probe, EmailVerified) and not (
                probe.already_verified or probe.free_provider
            ):
                stored = dry.get(Domain, probe.domain)
                known_registration = stored.registered_at if stored is not None else None
                # Well-known providers are never checked; for a custom domain the
                # oldest verification on it decides what counts as a re-registration
                # (asked while the address counts as verified, in this dry run).
                due = select_due(
                    dry,
                    now=now,
                    limit=None,
                    everything=True,
                    names=[probe.domain],
                    include_leased=True,
                )
        if isinstance(probe, AccountError):
            raise probe
        result: CheckResult | None = None
        if due and self._checker is not None:
            try:
                result = self._checker.check(due[0], now=now)
            except Exception:  # a verification must not fail because a source did
                log.exception("checking %s at verification failed", probe.domain)
        if (
            due
            and self._checker is not None
            and known_registration is not None
            and (
                result is None
                or (result.decision.registered_at is None and not result.decision.verdict.dangerous)
            )
        ):
            # Without the registry's date there is no telling whether the domain was
            # registered again since the store saw it: never call it safe on doubt. (A
            # dangerous verdict needs no date: it is applied below, unverifying.)
            raise CheckUnavailable(
                f"the registry of {probe.domain} did not answer, so the address was not "
                "verified; open the link again in a few minutes"
            )
        outcome = self._redeem_verification(session, token, session_account_id, now)
        if isinstance(outcome, AccountError):
            raise outcome
        if not outcome.already_verified:
            if due and result is not None:
                apply_result(session, result, policy=self._policy)
                if reregistered_since(known_registration, result.decision.registered_at):
                    _refuse_verification(session, outcome, known_registration, result, now)
            elif due:
                due_now(session, outcome.domain, now)
            email = session.get(Email, outcome.email_id)
            still = bool(email is not None and email.verified)
            if still:
                account = _account(session, outcome.account_id)
                self._queue_security_mails(
                    session, account, "email.verified", outcome.address, now, skip=outcome.address
                )
            outcome = replace(outcome, verified=still)
        if not due or outcome.already_verified:
            return outcome
        return replace(
            outcome,
            checked=result is not None,
            verdict=result.decision.verdict.value if result else None,
            reason=result.decision.reason if result else None,
        )

    @contextmanager
    def _dry_run(self, session: Session) -> Iterator[Session]:
        """A session to try the redeem in, always rolled back: one of its own, so the
        caller's holds no lock (nor, through the check, a connection); a savepoint of the
        caller's when that has written already (a caller composing calls: its locks would
        make a session of its own wait), whose own locks go with the savepoint."""
        if not has_written(session):
            with self._probes() as dry:
                try:
                    yield dry
                finally:
                    dry.rollback()
            return
        nested = savepoint(session)
        try:
            yield session
        finally:
            nested.rollback()
            session.expire_all()  # what the dry run loaded is the caller's to read again

    def _redeem_verification(
        self, session: Session, token: str, session_account_id: int | None, now: datetime
    ) -> AccountError | EmailVerified:
        kinds = (TokenKind.VERIFY_EMAIL, TokenKind.REVERIFY_EMAIL)
        try:
            row = tokens.peek(session, kinds, token, now=now)
        except TokenInvalid as exc:
            return exc
        if row.kind == TokenKind.REVERIFY_EMAIL and session_account_id != row.account_id:
            return LoginRequired(
                "sign in to the account this address belongs to, then open the link"
            )
        email = (
            session.get(Email, row.email_id, with_for_update=True, populate_existing=True)
            if row.email_id
            else None
        )
        if email is None or email.account_id != row.account_id:
            return TokenInvalid("this link is not valid")
        domain = session.get(Domain, email.domain)
        if (
            row.kind == TokenKind.VERIFY_EMAIL
            and domain is not None
            and domain.dangerous_at is not None
        ):
            # A plain link, and the domain was found dangerous or registered again
            # (since the link was sent: a link sent later is login-bound): whoever
            # reads its mail now may not be the one who asked.
            return TokenInvalid(
                "this address's domain may have changed hands since this link was sent; "
                "sign in and ask for a new one from your account page"
            )
        if email.unverified_at is not None and row.created_at < email.unverified_at:
            # Sent before lapsewatch doubted the domain: it may sit in a mailbox
            # that now belongs to someone else.
            return TokenInvalid(
                "this link was sent before the address was unverified; ask for a new one "
                "from your account page"
            )
        tokens.consume(session, kinds, token, now=now)
        account = email.account
        base = EmailVerified(
            account.id,
            account.username,
            email.id,
            email.address,
            email.domain,
            email.free_provider,
            verified=True,
        )
        if email.verified:
            return replace(base, already_verified=True)
        before = {
            "verified": False,
            "verified_at": isoformat(email.verified_at),
            "unverified_at": isoformat(email.unverified_at),
            "unverify_reason": email.unverify_reason,
        }
        email.verified = True
        email.verified_at = now
        if row.kind == TokenKind.REVERIFY_EMAIL:
            # Its owner, signed in, proved the mailbox now: trusted from here on
            # (a domain they bought back is theirs), not since it was first added.
            email.added_at = now
        email.unverified_at = None
        email.unverify_reason = None
        email.unverify_detail = None
        tokens.revoke(session, kinds, account_id=account.id, email_id=email.id, now=now)
        record(
            session,
            at=now,
            actor=user_actor(account.username),
            kind="email.verified",
            account_id=account.id,
            email_id=email.id,
            domain=email.domain,
            before=before,
            after={"verified": True, "verified_at": isoformat(now), "via": row.kind},
        )
        return base


# --------------------------------------------------------------------------- functions


def _refuse_verification(
    session: Session,
    verified: EmailVerified,
    known: datetime | None,
    result: CheckResult,
    now: datetime,
) -> None:
    """Undo a verification whose domain was re-registered since the store last saw it,
    and remember the domain and the address as ones that may have changed hands."""
    email = session.get(Email, verified.email_id, with_for_update=True)
    domain = session.get(Domain, verified.domain, with_for_update=True)
    if domain is not None:
        domain.dangerous_at = now
        domain.dangerous_verdict = Verdict.REREGISTERED.value
    if email is None:
        return
    reason = (
        f"{verified.domain} was registered again on {isoformat(result.decision.registered_at)}, "
        f"after the registration seen before ({isoformat(known)})"
    )
    unverify_email(session, email, Verdict.REREGISTERED, reason, now)
    record(
        session,
        at=now,
        actor=SYSTEM,
        kind="email.verification_refused",
        account_id=email.account_id,
        email_id=email.id,
        domain=email.domain,
        before={"registered_at": isoformat(known)},
        after={
            "verified": False,
            "verdict": Verdict.REREGISTERED.value,
            "registered_at": isoformat(result.decision.registered_at),
        },
        reason=reason,
    )
