"""The registry side's services: sign-up, verification, login with TOTP, addresses,
password reset that a lapsed domain cannot open, and the security overview.

Framework-free on purpose: the web app, the CLI and tests call the same typed
methods, get frozen dataclasses back, and catch one :class:`AccountError`.
Every method takes its caller's session and never commits: the caller owns the
transaction (:mod:`lapsewatch.store.work`; the web app's ``context.run``) and
commits it also on an :class:`AccountError` (``KEEP``), whose record must stand.
Slow work (Argon2, a domain check) reads on connections of its own and runs
before the method writes, so no database lock waits on it. Every mail is queued
in the outbox by the transaction that decides it, and sent by the outbox once
that commits (:mod:`lapsewatch.mail.outbox`): a link's token is made when it is
sent, and a mail is lost neither with the process nor with the mail server.

The rules that make the ``ctx`` attack fail, enforced by the job services that
:class:`AccountService` combines (sign-up and addresses, verification, login
and 2FA, recovery; shared parts in :mod:`lapsewatch.accounts.core`):

* a password reset is only ever mailed to an address that is verified *now*,
  and a reset link dies if its address is unverified before it is used;
* an address lapsewatch unverified becomes verified again only through a
  re-verification link that its logged-in owner asked for *and* redeems while
  logged in, so whoever now reads the lapsed domain's mail cannot re-verify it;
* a verification link issued before the address was unverified is dead;
* an address lapsewatch once unverified (even if removed since, see
  ``address_history``), or any address on a domain once found dangerous, gets
  only such a login-bound link, whoever adds it;
* an address's domain is checked the moment it is verified, and a registration
  date newer than the one the store saw before is a re-registration: the
  verification is refused;
* an API push or import never touches an account the web app owns (the
  importer checks ``Account.owner``), and names and addresses are matched by
  their case-folded keys (:mod:`lapsewatch.names`).

Against a stolen session: every change that guards the account is mailed to
all its verified addresses, turning 2FA on ends the other sessions, and the web
app asks for the password again before such changes (:meth:`reauthenticate`).
Limits on password and code checks are counted *before* the check (see
:mod:`lapsewatch.accounts.ratelimit`), and a recovery code is spent by one
conditional UPDATE, so concurrency buys an attacker nothing.
"""

from __future__ import annotations

from sqlalchemy import Engine

from lapsewatch.accounts.addresses import AddressService, check_username
from lapsewatch.accounts.core import Clock as Clock
from lapsewatch.accounts.core import Deliver
from lapsewatch.accounts.login import LoginService
from lapsewatch.accounts.recovery import RecoveryService
from lapsewatch.accounts.results import (
    RESET_REQUESTED,
    AddressStatus,
    AddressView,
    Advice,
    EmailAdded,
    EmailVerified,
    LoginResult,
    LoginStatus,
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
from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.accounts.verification import VerificationService
from lapsewatch.accounts.verification import reregistered_since as reregistered_since
from lapsewatch.config import Settings
from lapsewatch.cycle.domaincheck import CycleDomainChecker
from lapsewatch.domains import load_free_providers
from lapsewatch.schedule import Policy

__all__ = [
    "RESET_REQUESTED",
    "AccountService",
    "AddressStatus",
    "AddressView",
    "Advice",
    "EmailAdded",
    "EmailVerified",
    "LoginResult",
    "LoginStatus",
    "PasswordReset",
    "RecoveryCodes",
    "RecoveryOptions",
    "ResetRequested",
    "ResetTokenInfo",
    "SecurityOverview",
    "SignedUp",
    "TotpSetup",
    "VerificationSent",
    "check_username",
]


class AccountService(AddressService, VerificationService, LoginService, RecoveryService):
    """All account operations, each in its caller's session; one instance per process.

    Built like :class:`~lapsewatch.accounts.core.AccountCore`; the job services it
    combines share its rate limiter and ``deliver``.
    """

    @classmethod
    def from_settings(
        cls,
        engine: Engine,
        settings: AccountSettings,
        check_settings: Settings,
        *,
        deliver: Deliver | None = None,
    ) -> AccountService:
        """The production wiring: the cycle's checker, and ``deliver`` for the mail
        (the web app passes an :class:`~lapsewatch.mail.sender.OutboxSender`, which
        keeps SMTP time out of the answer: that would tell a visitor whether a reset
        mail was sent)."""
        return cls(
            engine,
            settings,
            deliver=deliver,
            checker=CycleDomainChecker(check_settings),
            policy=Policy.from_settings(check_settings),
            free_providers=load_free_providers(check_settings.free_providers_file),
        )
