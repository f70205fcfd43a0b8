"""The registry side's services: sign-up, verification, login with TOTP, addresses,
password reset that a lapsed domain cannot open, and the security overview.

Framework-free on purpose: the web app, the CLI and tests call the same typed
methods, get frozen dataclasses back, and catch one :class:`AccountError`.
Every method runs its own short transactions; slow work (Argon2, a domain
check, SMTP) happens outside them, so no database lock waits on the network.

The rules that make the ``ctx`` attack fail, all enforced here:

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

import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lapsewatch.accounts import tokens
from lapsewatch.accounts.domaincheck import CycleDomainChecker, DomainChecker
from lapsewatch.accounts.errors import (
    AccountError,
    AccountNotFound,
    AddressInUse,
    AlreadyVerified,
    EmailNotFound,
    InvalidAddress,
    InvalidCredentials,
    InvalidSecondFactor,
    InvalidUsername,
    LastVerifiedAddress,
    LoginRequired,
    NotVerified,
    PrimaryAddress,
    RateLimited,
    TokenInvalid,
    TooManyAddresses,
    TotpAlreadyEnabled,
    TotpNotEnabled,
    UsernameTaken,
)
from lapsewatch.accounts.events import SYSTEM, record, record_once, user_actor
from lapsewatch.accounts.passwords import Passwords, check_policy
from lapsewatch.accounts.ratelimit import RateLimiter
from lapsewatch.accounts.results import (
    RESET_REQUESTED,
    AddressState,
    AddressStatus,
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
    build_address_state,
    build_recovery_options,
)
from lapsewatch.accounts.settings import AccountSettings, Limit
from lapsewatch.accounts.tokens import TokenKind
from lapsewatch.accounts.totp import (
    matching_timecode,
    new_recovery_codes,
    new_secret,
    normalize_recovery_code,
    provisioning_uri,
)
from lapsewatch.config import Settings
from lapsewatch.cycle.apply import CheckResult, apply_result, unverify_email
from lapsewatch.cycle.due import DueDomain, select_due
from lapsewatch.dates import isoformat
from lapsewatch.domains import DomainError, FreeProviders, load_free_providers, parse
from lapsewatch.mail import messages
from lapsewatch.mail.smtp import BackgroundMailer, Mail, Mailer, MailError, SmtpMailer
from lapsewatch.names import InvalidName, address_key, username_key
from lapsewatch.names import check_username as _check_name
from lapsewatch.schedule import Policy
from lapsewatch.store.db import make_sessionmaker
from lapsewatch.store.models import Account, AddressHistory, Domain, Email, RecoveryCode, Token
from lapsewatch.verdict import Verdict

__all__ = [
    "RESET_REQUESTED",
    "AccountService",
    "AddressState",
    "AddressStatus",
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

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_MAX_IDENTIFIER = 320


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- service


class AccountService:
    """All account operations, each in its own transactions; one instance per process."""

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

    @classmethod
    def from_settings(
        cls,
        engine: Engine,
        settings: AccountSettings,
        check_settings: Settings,
        *,
        background_mail: bool = True,
    ) -> AccountService:
        """The production wiring: SMTP (sent from a background thread), the cycle's checker.

        Background sending keeps SMTP latency out of the response time, which
        would otherwise tell a visitor whether a reset mail was sent.
        """
        smtp = SmtpMailer.from_settings(settings)
        mailer: Mailer = BackgroundMailer(smtp) if background_mail else smtp
        return cls(
            engine,
            settings,
            mailer=mailer,
            checker=CycleDomainChecker(check_settings),
            policy=Policy.from_settings(check_settings),
            free_providers=load_free_providers(check_settings.free_providers_file),
        )

    def close(self) -> None:
        """Send what the background mailer still holds."""
        if isinstance(self.mailer, BackgroundMailer):
            self.mailer.close()

    # ------------------------------------------------------------------ sign-up, addresses

    def sign_up(
        self, username: str, password: str, email: str, *, client: str | None = None
    ) -> SignedUp:
        """Create an account with one unverified primary address and mail its verification link.

        If the address already belongs to an account, nothing is made and the
        address gets a mail saying so: the visitor sees the same answer either
        way, so sign-up tells nobody which addresses have accounts.
        """
        username = check_username(username.strip())
        parsed = self._parse_address(email)
        check_policy(
            password,
            username=username,
            addresses=(parsed.address,),
            minimum=self.settings.min_password_length,
            maximum=self.settings.max_password_length,
        )
        password_hash = self._passwords.hash(password)
        now = self._clock()
        client = _clean_client(client)
        with self._sessions.begin() as session:
            if client is not None and not self._limiter.allow(
                session,
                self._limiter.key("sign-up-client", client),
                self.settings.limits.sign_ups_per_client,
                now=now,
            ):
                outcome: AccountError | tuple[int, int, str, bool] | None = RateLimited(
                    "too many sign-ups from here; try again later"
                )
            else:
                outcome = self._create_account(session, username, password_hash, parsed, now)
        if isinstance(outcome, AccountError):
            raise outcome
        if outcome is None:
            sent = self._send(
                messages.address_taken_mail(
                    address=parsed.address,
                    sign_in_url=messages.link(self.settings.base_url, messages.LOGIN_PATH),
                )
            )
            return SignedUp(None, username, None, parsed.address, sent)
        account_id, email_id, token, again = outcome
        sent = self._send(
            messages.verification_mail(
                address=parsed.address,
                username=username,
                url=messages.link(self.settings.base_url, messages.VERIFY_EMAIL_PATH, token),
                ttl=self.settings.verify_token_ttl,
                again=again,
            )
        )
        return SignedUp(account_id, username, email_id, parsed.address, sent)

    def _create_account(
        self, session: Session, username: str, password_hash: str, parsed: _Address, now: datetime
    ) -> AccountError | tuple[int, int, str, bool] | None:
        """The new account's ids, its link and whether it is login-bound; ``None``: the
        address is someone else's (the caller mails it instead of saying so)."""
        if _account_by_username(session, username) is not None:
            return UsernameTaken(f"the username {username!r} is taken")
        if not self._address_free(session, parsed.address, now):
            return None
        account = Account(
            username=username, created_at=now, password_hash=password_hash, projects=[]
        )
        email = parsed.new_email(primary=True, now=now)
        account.emails.append(email)
        try:
            # Added inside the savepoint, so a refused insert leaves nothing pending.
            with session.begin_nested():
                session.add(account)
                session.flush()
        except IntegrityError:  # a concurrent sign-up took the name or the address
            return UsernameTaken("that username or address was just taken")
        actor = user_actor(username)
        record(session, at=now, actor=actor, kind="account.created", account_id=account.id)
        self._record_email_added(session, email, actor, now)
        kind = _verification_kind(session, email)
        token = tokens.issue(
            session,
            kind,
            account_id=account.id,
            email_id=email.id,
            now=now,
            ttl=self.settings.verify_token_ttl,
        )
        return account.id, email.id, token, kind is TokenKind.REVERIFY_EMAIL

    def add_email(self, account_id: int, address: str) -> EmailAdded:
        """Add an unverified address to the logged-in account and mail its verification link."""
        parsed = self._parse_address(address)
        now = self._clock()
        with self._sessions.begin() as session:
            outcome = self._add_email(session, account_id, parsed, now)
        if isinstance(outcome, AccountError):
            raise outcome
        email_id, username, token, again, notices = outcome
        sent = self._send(
            messages.verification_mail(
                address=parsed.address,
                username=username,
                url=messages.link(self.settings.base_url, messages.VERIFY_EMAIL_PATH, token),
                ttl=self.settings.verify_token_ttl,
                again=again,
            )
        )
        self._send_all(notices)
        return EmailAdded(email_id, parsed.address, sent)

    def _add_email(
        self, session: Session, account_id: int, parsed: _Address, now: datetime
    ) -> AccountError | tuple[int, str, str, bool, list[Mail]]:
        account = _account(session, account_id)
        if len(account.emails) >= self.settings.max_addresses:
            return TooManyAddresses(
                f"an account can have at most {self.settings.max_addresses} addresses"
            )
        if not self._address_free(session, parsed.address, now):
            return AddressInUse("this address is already used by an account")
        if not self._verification_allowed(session, account.id, now):
            return RateLimited("too many verification mails; try again later")
        email = parsed.new_email(primary=not account.emails, now=now)
        try:
            with session.begin_nested():
                account.emails.append(email)
                session.flush()
        except IntegrityError:
            return AddressInUse("this address is already used by an account")
        self._record_email_added(session, email, user_actor(account.username), now)
        kind = _verification_kind(session, email)
        token = tokens.issue(
            session,
            kind,
            account_id=account.id,
            email_id=email.id,
            now=now,
            ttl=self.settings.verify_token_ttl,
        )
        notices = self._security_mails(account, "email.added", email.address, now)
        return email.id, account.username, token, kind is TokenKind.REVERIFY_EMAIL, notices

    def remove_email(self, account_id: int, email_id: int) -> None:
        """Remove an address; never the primary, never the last verified one.

        The last verified address is the only way a forgotten password comes
        back, so it goes only once another address is verified.
        """
        now = self._clock()
        notices: list[Mail] = []
        with self._sessions.begin() as session:
            account = _account(session, account_id)
            email = _own_email(account, email_id)
            verified_others = [e for e in account.emails if e.verified and e.id != email.id]
            error: AccountError | None = None
            if email.primary:
                error = PrimaryAddress("make another verified address primary first")
            elif email.verified and not verified_others:
                error = LastVerifiedAddress(
                    "this is your only verified address; verify another one first"
                )
            else:
                record(
                    session,
                    at=now,
                    actor=user_actor(account.username),
                    kind="email.removed",
                    account_id=account.id,
                    domain=email.domain,
                    before={"address": email.address, "verified": email.verified},
                )
                # The removed address hears of it too: it may be the owner's last word.
                notices = self._security_mails(account, "email.removed", email.address, now)
                account.emails.remove(email)
        if error is not None:
            raise error
        self._send_all(notices)

    def set_primary(self, account_id: int, email_id: int) -> None:
        """Make a verified address the primary one."""
        now = self._clock()
        with self._sessions.begin() as session:
            account = _account(session, account_id)
            email = _own_email(account, email_id)
            if not email.verified:
                raise NotVerified("only a verified address can be primary")
            old = next((e for e in account.emails if e.primary), None)
            if old is email:
                return
            for other in account.emails:
                other.primary = other is email
            record(
                session,
                at=now,
                actor=user_actor(account.username),
                kind="email.primary_changed",
                account_id=account.id,
                email_id=email.id,
                before={"primary": old.address if old else None},
                after={"primary": email.address},
            )
            notices = self._security_mails(account, "email.primary_changed", email.address, now)
        self._send_all(notices)

    def request_reverification(self, account_id: int, email_id: int) -> VerificationSent:
        """Mail a verification link to that address of the logged-in account.

        Also for an address never verified (a lost first link). For an address
        lapsewatch unverified, the link only works while its owner is logged in
        (see :meth:`verify_email`).
        """
        now = self._clock()
        with self._sessions.begin() as session:
            account = _account(session, account_id)
            email = _own_email(account, email_id)
            outcome: AccountError | tuple[str, bool]
            if email.verified:
                outcome = AlreadyVerified("this address is already verified")
            elif not self._verification_allowed(session, account.id, now):
                outcome = RateLimited("too many verification mails; try again later")
            else:
                kind = _verification_kind(session, email)
                again = kind is TokenKind.REVERIFY_EMAIL
                # Only the newest link works: an older one may sit in a mailbox we doubt.
                tokens.revoke(
                    session,
                    (TokenKind.VERIFY_EMAIL, TokenKind.REVERIFY_EMAIL),
                    account_id=account.id,
                    email_id=email.id,
                    now=now,
                )
                token = tokens.issue(
                    session,
                    kind,
                    account_id=account.id,
                    email_id=email.id,
                    now=now,
                    ttl=self.settings.verify_token_ttl,
                )
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
                outcome = (token, again)
            address, username = email.address, account.username
        if isinstance(outcome, AccountError):
            raise outcome
        token, again = outcome
        sent = self._send(
            messages.verification_mail(
                address=address,
                username=username,
                url=messages.link(self.settings.base_url, messages.VERIFY_EMAIL_PATH, token),
                ttl=self.settings.verify_token_ttl,
                again=again,
            )
        )
        return VerificationSent(email_id, address, sent)

    def verify_email(self, token: str, *, session_account_id: int | None = None) -> EmailVerified:
        """Redeem a verification link, then check the address's domain at once.

        ``session_account_id`` is the logged-in account, if any: a
        re-verification link requires it to be the owner (:class:`LoginRequired`).
        If the domain has already lapsed the address is unverified again at once
        (``verified=False`` in the result); if the sources cannot answer, the
        verification stands and the cycle retries the domain soon.
        """
        now = self._clock()
        due: list[DueDomain] = []
        known_registration: datetime | None = None
        notices: list[Mail] = []
        with self._sessions.begin() as session:
            outcome = self._redeem_verification(session, token, session_account_id, now)
            if isinstance(outcome, EmailVerified) and not outcome.already_verified:
                account = _account(session, outcome.account_id)
                notices = self._security_mails(
                    account, "email.verified", outcome.address, now, skip=outcome.address
                )
            if isinstance(outcome, EmailVerified) and not (
                outcome.already_verified or outcome.free_provider
            ):
                stored = session.get(Domain, outcome.domain)
                known_registration = stored.registered_at if stored is not None else None
                # Well-known providers are never checked; for a custom domain the
                # oldest verification on it decides what counts as a re-registration.
                due = select_due(
                    session,
                    now=now,
                    limit=None,
                    everything=True,
                    names=[outcome.domain],
                    include_leased=True,
                )
        if isinstance(outcome, AccountError):
            raise outcome
        self._send_all(notices)
        if not due:
            return outcome
        result = None
        if self._checker is not None:
            try:
                result = self._checker.check(due[0], now=now)
            except Exception:  # a verification must not fail because a source did
                log.exception("checking %s at verification failed", outcome.domain)
        with self._sessions.begin() as session:
            if result is not None:
                apply_result(session, result, policy=self._policy)
                new_owner = result.decision.registered_at
                if reregistered_since(known_registration, new_owner):
                    _refuse_verification(session, outcome, known_registration, result, now)
            else:
                _make_due(session, outcome.domain, now)
        with self._sessions() as session:
            email = session.get(Email, outcome.email_id)
            still = bool(email is not None and email.verified)
        return replace(
            outcome,
            verified=still,
            checked=result is not None,
            verdict=result.decision.verdict.value if result else None,
            reason=result.decision.reason if result else None,
        )

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
        email = session.get(Email, row.email_id, with_for_update=True) if row.email_id else None
        if email is None or email.account_id != row.account_id:
            return TokenInvalid("this link is not valid")
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

    # ----------------------------------------------------------------------------- login

    def login(
        self,
        username: str,
        password: str,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        client: str | None = None,
    ) -> LoginResult:
        """Check the password (and the second factor, if given and 2FA is on).

        With 2FA on and no code given, the result says ``SECOND_FACTOR_REQUIRED``:
        remember the account id in the session as "password checked" and call
        :meth:`complete_login`. Failures are counted per username and per client
        (:class:`RateLimited` once over), each attempt reserved before Argon2 runs;
        an unknown username costs the same hashing time as a wrong password and
        gets the same error. An account with 2FA is not locked by wrong passwords
        for its name (its owner would be the one locked out; the code still guards
        it); the per-client limit still holds.
        """
        now = self._clock()
        username = _clean(username, _MAX_IDENTIFIER)
        client = _clean_client(client)
        with self._sessions.begin() as session:
            account = _account_by_username(session, username)
            keys = self._login_keys(username, client, account)
            stored = account.password_hash if account is not None else None
            account_id = account.id if account is not None else None
            hits, blocked = self._reserve(session, keys, now, event_kind="login.rate_limited")
        if blocked is None:
            blocked = self._recount(keys, hits, now)
        if blocked is not None:
            raise blocked
        good = self._passwords.verify(stored, password)
        with self._sessions.begin() as session:
            outcome = self._after_password(session, account_id, good, password, hits, client, now)
        if isinstance(outcome, AccountError):
            raise outcome
        if outcome.status is LoginStatus.SECOND_FACTOR_REQUIRED and (
            totp_code is not None or recovery_code is not None
        ):
            return self._second_factor(outcome.account_id, totp_code, recovery_code, client)
        return outcome

    def _login_keys(
        self, username: str, client: str | None, account: Account | None
    ) -> list[tuple[str, Limit]]:
        limits = self.settings.limits
        keys = []
        if account is None or not account.totp_enabled:
            # By key: full-width or case variants of a name are the same account.
            name = username_key(username)
            keys.append((self._limiter.key("login-user", name), limits.login_per_username))
        if client is not None:
            keys.append((self._limiter.key("login-client", client), limits.login_per_client))
        return keys

    def _after_password(
        self,
        session: Session,
        account_id: int | None,
        good: bool,
        password: str,
        hits: list[int],
        client: str | None,
        now: datetime,
    ) -> AccountError | LoginResult:
        account = session.get(Account, account_id) if account_id is not None else None
        if account is None or not good:
            if account is not None:  # the reserved hits stay: they count the failure
                record(
                    session,
                    at=now,
                    actor=user_actor(account.username),
                    kind="login.failed",
                    account_id=account.id,
                    after={"client": client, "reason": "password"},
                )
            return InvalidCredentials("wrong username or password")
        self._limiter.refund(session, hits)
        if account.password_hash and self._passwords.needs_rehash(account.password_hash):
            account.password_hash = self._passwords.hash(password)
        if account.totp_enabled:
            return LoginResult(
                LoginStatus.SECOND_FACTOR_REQUIRED, account.id, account.username, account.is_admin
            )
        record(
            session,
            at=now,
            actor=user_actor(account.username),
            kind="login.succeeded",
            account_id=account.id,
            after={"client": client, "method": "password"},
        )
        return LoginResult(LoginStatus.OK, account.id, account.username, account.is_admin)

    def complete_login(
        self,
        account_id: int,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        client: str | None = None,
    ) -> LoginResult:
        """Second step of a 2FA login; call only for an account whose password was just checked."""
        return self._second_factor(account_id, totp_code, recovery_code, _clean_client(client))

    def _second_factor(
        self,
        account_id: int,
        totp_code: str | None,
        recovery_code: str | None,
        client: str | None,
    ) -> LoginResult:
        """Check a TOTP or recovery code: the attempt is reserved under the limit first,
        a TOTP time step logs in once (a unique event key), and a recovery code is
        spent by a conditional UPDATE that only one of many racing logins can win."""
        now = self._clock()
        key = self._limiter.key("second-factor", str(account_id))
        keys = [(key, self.settings.limits.second_factor_per_account)]
        with self._sessions.begin() as session:
            account = _account(session, account_id)
            if not account.totp_enabled:
                raise TotpNotEnabled("two-factor authentication is not enabled")
            secret = account.totp_secret
            codes = [(c.id, c.code_hash) for c in account.unused_recovery_codes]
            hits, blocked = self._reserve(session, keys, now, event_kind="login.rate_limited")
        if blocked is None:
            blocked = self._recount(keys, hits, now)
        if blocked is not None:
            raise blocked
        timecode: int | None = None
        code_id: int | None = None
        if totp_code is not None and secret:
            timecode = matching_timecode(secret, totp_code, now)
        elif recovery_code is not None:
            normalized = normalize_recovery_code(recovery_code)
            if normalized is not None:
                code_id = next((i for i, h in codes if self._passwords.verify(h, normalized)), None)
        with self._sessions.begin() as session:
            account = _account(session, account_id)
            actor = user_actor(account.username)
            method = None
            if timecode is not None and record_once(
                session,
                key=_totp_step_key(account.id, timecode),
                at=now,
                actor=actor,
                kind="login.succeeded",
                account_id=account.id,
                after={"client": client, "method": "totp"},
            ):
                method = "totp"
            elif code_id is not None and _spend_recovery_code(session, code_id, now):
                method = "recovery_code"
                left = len(account.unused_recovery_codes) - 1
                record(
                    session,
                    at=now,
                    actor=actor,
                    kind="totp.recovery_code_used",
                    account_id=account.id,
                    after={"recovery_codes_left": left, "client": client},
                )
                record(
                    session,
                    at=now,
                    actor=actor,
                    kind="login.succeeded",
                    account_id=account.id,
                    after={"client": client, "method": method},
                )
            if method is not None:
                self._limiter.refund(session, hits)
                session.expire(account, ["unused_recovery_codes"])
                return LoginResult(
                    LoginStatus.OK,
                    account.id,
                    account.username,
                    account.is_admin,
                    used_recovery_code=method == "recovery_code",
                    recovery_codes_left=len(account.unused_recovery_codes),
                )
            record(
                session,
                at=now,
                actor=actor,
                kind="login.failed",
                account_id=account.id,
                after={"client": client, "reason": "second_factor"},
            )
        raise InvalidSecondFactor("wrong or already used code")

    # ---------------------------------------------------------------------------- sessions

    def end_sessions(self, account_id: int) -> int:
        """End every session of the account (logout, "log out everywhere"); the new
        generation, which a session that should live on (this one) takes up."""
        now = self._clock()
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            generation = _bump_generation(account)
            record(
                session,
                at=now,
                actor=user_actor(account.username),
                kind="sessions.ended",
                account_id=account.id,
                after={"session_generation": generation},
            )
        return generation

    def reauthenticate(self, account_id: int, password: str) -> None:
        """Ask for the password again before a change that guards the account; a
        stolen session cookie alone then cannot make it (raises on a wrong one)."""
        self._check_password(account_id, password)

    # ----------------------------------------------------------------------------- TOTP

    def begin_totp_setup(self, account_id: int) -> TotpSetup:
        """A fresh secret to show, kept in the store (not the cookie) until confirmed."""
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            if account.totp_enabled:
                raise TotpAlreadyEnabled("two-factor authentication is already enabled")
            secret = new_secret()
            account.totp_pending_secret = secret
            return TotpSetup(secret, provisioning_uri(secret, account.username))

    def confirm_totp(self, account_id: int, code: str) -> RecoveryCodes:
        """Enable 2FA once the app shows a matching code; return the recovery codes (once).

        The confirming code's time step cannot log in again, and every other
        session ends: someone holding a stolen session must not stay in once the
        owner (or they) turn 2FA on.
        """
        now = self._clock()
        with self._sessions() as session:
            pending = _account(session, account_id).totp_pending_secret
        timecode = matching_timecode(pending, code, now) if pending else None
        if pending is None or timecode is None:
            raise InvalidSecondFactor("that code does not match; check the app's clock and retry")
        codes = new_recovery_codes(self.settings.recovery_code_count)
        hashes = [self._passwords.hash(normalize_recovery_code(c) or c) for c in codes]
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            if account.totp_enabled:
                raise TotpAlreadyEnabled("two-factor authentication is already enabled")
            if account.totp_pending_secret != pending:
                raise InvalidSecondFactor("the set-up was restarted; scan the new code")
            account.totp_enabled = True
            account.totp_secret = pending
            account.totp_pending_secret = None
            _replace_recovery_codes(session, account.id, hashes)
            generation = _bump_generation(account)
            record_once(
                session,
                key=_totp_step_key(account.id, timecode),
                at=now,
                actor=user_actor(account.username),
                kind="totp.enabled",
                account_id=account.id,
                before={"totp_enabled": False},
                after={"totp_enabled": True, "recovery_codes": len(hashes)},
            )
            notices = self._security_mails(account, "totp.enabled", "", now)
        self._send_all(notices)
        return RecoveryCodes(codes, session_generation=generation)

    def disable_totp(self, account_id: int, password: str) -> None:
        """Turn 2FA off; needs the password, so a hijacked session alone cannot."""
        now = self._clock()
        with self._sessions() as session:
            if not _account(session, account_id).totp_enabled:
                raise TotpNotEnabled("two-factor authentication is not enabled")
        self._check_password(account_id, password)
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            account.totp_enabled = False
            account.totp_secret = None
            _replace_recovery_codes(session, account.id, [])
            record(
                session,
                at=now,
                actor=user_actor(account.username),
                kind="totp.disabled",
                account_id=account.id,
                before={"totp_enabled": True},
                after={"totp_enabled": False},
            )
            notices = self._security_mails(account, "totp.disabled", "", now)
        self._send_all(notices)

    def regenerate_recovery_codes(self, account_id: int, password: str) -> RecoveryCodes:
        """New codes replace all the old ones (after a few were used, or if they leaked)."""
        now = self._clock()
        with self._sessions() as session:
            if not _account(session, account_id).totp_enabled:
                raise TotpNotEnabled("two-factor authentication is not enabled")
        self._check_password(account_id, password)
        codes = new_recovery_codes(self.settings.recovery_code_count)
        hashes = [self._passwords.hash(normalize_recovery_code(c) or c) for c in codes]
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            before = len(account.unused_recovery_codes)
            _replace_recovery_codes(session, account.id, hashes)
            record(
                session,
                at=now,
                actor=user_actor(account.username),
                kind="totp.recovery_codes_regenerated",
                account_id=account.id,
                before={"recovery_codes": before},
                after={"recovery_codes": len(hashes)},
            )
            notices = self._security_mails(account, "totp.recovery_codes_regenerated", "", now)
        self._send_all(notices)
        return RecoveryCodes(codes)

    # ------------------------------------------------------------------------- passwords

    def change_password(self, account_id: int, current_password: str, new_password: str) -> int:
        """Change a known password; open reset links and every other session die with
        the old password. Returns the new session generation (for this session)."""
        now = self._clock()
        with self._sessions() as session:
            account = _account(session, account_id)
            username = account.username
            addresses = tuple(e.address for e in account.emails)
        self._check_password(account_id, current_password)
        check_policy(
            new_password,
            username=username,
            addresses=addresses,
            minimum=self.settings.min_password_length,
            maximum=self.settings.max_password_length,
        )
        new_hash = self._passwords.hash(new_password)
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            account.password_hash = new_hash
            generation = _bump_generation(account)
            tokens.revoke(session, (TokenKind.PASSWORD_RESET,), account_id=account.id, now=now)
            record(
                session,
                at=now,
                actor=user_actor(account.username),
                kind="password.changed",
                account_id=account.id,
            )
            notices = self._security_mails(account, "password.changed", "", now)
        self._send_all(notices)
        return generation

    def request_password_reset(
        self, identifier: str, *, client: str | None = None
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

        The same work is done whatever the outcome (a token is made and hashed
        either way); pass a :class:`BackgroundMailer` so SMTP time is not seen.
        """
        now = self._clock()
        ident = _clean(identifier, _MAX_IDENTIFIER)
        client = _clean_client(client)
        spare_token = tokens.new_token()
        tokens.digest(spare_token)  # the hashing work is done whether or not it is used
        limits = self.settings.limits
        with self._sessions.begin() as session:
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
            mails: list[Mail] = []
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
                for index, email in enumerate(verified):
                    token = tokens.issue(
                        session,
                        TokenKind.PASSWORD_RESET,
                        account_id=account.id,
                        email_id=email.id,
                        now=now,
                        ttl=self.settings.reset_token_ttl,
                        token=spare_token if index == 0 else None,
                    )
                    mails.append(
                        messages.reset_mail(
                            address=email.address,
                            username=account.username,
                            url=messages.link(
                                self.settings.base_url, messages.RESET_PASSWORD_PATH, token
                            ),
                            ttl=self.settings.reset_token_ttl,
                            client=client,
                        )
                    )
                outcome = "sent" if mails else "no_verified_address"
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
                    "recipients": [m.to[0] for m in mails],
                },
            )
        for mail in mails:
            self._send(mail)
        return RESET_REQUESTED

    def check_reset_token(self, token: str) -> ResetTokenInfo:
        """Validate a reset link before showing the form (raises a TokenInvalid subclass)."""
        now = self._clock()
        with self._sessions() as session:
            row = tokens.peek(session, (TokenKind.PASSWORD_RESET,), token, now=now)
            account = _account(session, row.account_id)
            email = session.get(Email, row.email_id) if row.email_id is not None else None
            if email is None or not email.verified or email.account_id != account.id:
                raise TokenInvalid(
                    "this link was sent to an address that is no longer verified; ask for a new one"
                )
            return ResetTokenInfo(account.username, row.expires_at)

    def reset_password(self, token: str, new_password: str) -> PasswordReset:
        """Set a new password through a reset link: once, and only while the address it
        was sent to is still verified. Every other open reset link dies with it."""
        now = self._clock()
        with self._sessions() as session:
            row = tokens.peek(session, (TokenKind.PASSWORD_RESET,), token, now=now)
            account = _account(session, row.account_id)
            username = account.username
            addresses = tuple(e.address for e in account.emails)
        check_policy(  # a weak password keeps the link usable for a second try
            new_password,
            username=username,
            addresses=addresses,
            minimum=self.settings.min_password_length,
            maximum=self.settings.max_password_length,
        )
        new_hash = self._passwords.hash(new_password)
        notices: list[Mail] = []
        with self._sessions.begin() as session:
            outcome = self._redeem_reset(session, token, new_hash, now)
            if not isinstance(outcome, AccountError):
                account = _account(session, outcome.account_id)
                notices = self._security_mails(account, "password.reset", outcome.via, now)
        if isinstance(outcome, AccountError):
            raise outcome
        self._send_all(notices)
        return outcome

    def _redeem_reset(
        self, session: Session, token: str, new_hash: str, now: datetime
    ) -> AccountError | PasswordReset:
        try:
            row = tokens.consume(session, (TokenKind.PASSWORD_RESET,), token, now=now)
        except TokenInvalid as exc:
            return exc
        email = session.get(Email, row.email_id) if row.email_id is not None else None
        account = _account(session, row.account_id)
        if email is None or not email.verified or email.account_id != account.id:
            return TokenInvalid(
                "this link was sent to an address that is no longer verified; ask for a new one"
            )
        account.password_hash = new_hash
        _bump_generation(account)
        tokens.revoke(session, (TokenKind.PASSWORD_RESET,), account_id=account.id, now=now)
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

    # --------------------------------------------------------------------- what to show

    def recovery_options(self, account_id: int) -> RecoveryOptions:
        """How this account can be recovered: for its logged-in owner or support staff.

        Never show this to an anonymous visitor (it would tell them the account
        exists); the public reset page shows :data:`RESET_REQUESTED` instead.
        """
        with self._sessions() as session:
            return build_recovery_options(_account(session, account_id))

    def security_overview(self, account_id: int) -> SecurityOverview:
        """Each address with its state and why, the domain's verdict, and advice."""
        with self._sessions() as session:
            account = _account(session, account_id)
            emails = sorted(account.emails, key=lambda e: (not e.primary, e.id))
            names = {e.domain for e in emails}
            domains = {
                d.name: d for d in session.scalars(select(Domain).where(Domain.name.in_(names)))
            }
            states = tuple(build_address_state(e, domains.get(e.domain)) for e in emails)
            verified = [e for e in emails if e.verified]
            advice = Advice(
                enable_2fa=not account.totp_enabled,
                add_well_known_address=len(verified) == 1 and not verified[0].free_provider,
                verify_an_address=not verified,
            )
            return SecurityOverview(
                account.id,
                account.username,
                account.totp_enabled,
                len(account.unused_recovery_codes) if account.totp_enabled else 0,
                states,
                advice,
                build_recovery_options(account),
            )

    # -------------------------------------------------------------------------- helpers

    def _parse_address(self, text: str) -> _Address:
        try:
            parsed = parse(text, free_providers=self._free)
        except DomainError as exc:
            raise InvalidAddress(f"not a usable email address: {exc}") from None
        if parsed.address is None:
            raise InvalidAddress("an email address needs a local part and '@'")
        if len(parsed.address) > 320:
            raise InvalidAddress("the address is too long")
        return _Address(parsed.address, parsed.domain, parsed.free_provider)

    def _record_email_added(
        self, session: Session, email: Email, actor: str, now: datetime
    ) -> None:
        record(
            session,
            at=now,
            actor=actor,
            kind="email.added",
            account_id=email.account_id,
            email_id=email.id,
            domain=email.domain,
            after={"address": email.address, "primary": email.primary},
        )

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

    def _check_password(self, account_id: int, password: str) -> None:
        """Re-check the password of a logged-in account, under the login limit (reserved
        first): a stolen session must not become a password-guessing oracle."""
        now = self._clock()
        with self._sessions.begin() as session:
            account = _account(session, account_id)
            keys = [
                (
                    self._limiter.key("login-user", account.username_key),
                    self.settings.limits.login_per_username,
                )
            ]
            stored = account.password_hash
            hits, blocked = self._reserve(session, keys, now, event_kind="login.rate_limited")
        if blocked is None:
            blocked = self._recount(keys, hits, now)
        if blocked is not None:
            raise blocked
        if not self._passwords.verify(stored, password):
            raise InvalidCredentials("wrong password")
        with self._sessions.begin() as session:
            self._limiter.refund(session, hits)

    def _address_free(self, session: Session, address: str, now: datetime) -> bool:
        """Whether ``address`` may be added. An address someone added but never verified,
        whose link has expired, is dropped: nobody can squat on an address for good."""
        email = _email_by_address(session, address)
        if email is None:
            return True
        if email.verified or email.verified_at is not None or email.unverified_at is not None:
            return False
        open_link = session.scalar(
            select(
                exists().where(
                    Token.email_id == email.id, Token.used_at.is_(None), Token.expires_at > now
                )
            )
        )
        if open_link:
            return False
        record(
            session,
            at=now,
            actor=SYSTEM,
            kind="email.expired",
            account_id=email.account_id,
            domain=email.domain,
            before={"address": email.address, "verified": False},
            reason="never verified, and its verification link expired",
        )
        session.delete(email)
        session.flush()
        return True

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


@dataclass(frozen=True)
class _Address:
    address: str
    domain: str
    free_provider: bool

    def new_email(self, *, primary: bool, now: datetime) -> Email:
        return Email(
            added_at=now,
            address=self.address,
            domain=self.domain,
            free_provider=self.free_provider,
            primary=primary,
            verified=False,
        )


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


def check_username(username: str) -> str:
    """The username as stored; raises :class:`InvalidUsername` (the one rule,
    :func:`lapsewatch.names.check_username`)."""
    try:
        return _check_name(username)
    except InvalidName as exc:
        raise InvalidUsername(str(exc)) from None


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


def reregistered_since(known: datetime | None, observed: datetime | None) -> bool:
    """Whether the registry's registration date is newer than the one the store had
    seen: the domain was registered again, by whoever, since we last looked."""
    return known is not None and observed is not None and observed > known


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


def _totp_step_key(account_id: int, timecode: int) -> str:
    """The event key that lets one TOTP time step in once (set-up included)."""
    return f"login.totp:{account_id}:{timecode}"


def _spend_recovery_code(session: Session, code_id: int, now: datetime) -> bool:
    """Use the code up; true for exactly one of any number of racing callers."""
    spent = session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.id == code_id, RecoveryCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(spent.rowcount) == 1  # type: ignore[attr-defined]


def _replace_recovery_codes(session: Session, account_id: int, hashes: Sequence[str]) -> None:
    session.execute(delete(RecoveryCode).where(RecoveryCode.account_id == account_id))
    session.add_all(RecoveryCode(account_id=account_id, code_hash=h) for h in hashes)
    session.flush()


def _bump_generation(account: Account) -> int:
    """End every session made before now (the web app's session stamp includes it)."""
    account.session_generation = (account.session_generation or 0) + 1
    return account.session_generation


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


def _make_due(session: Session, name: str, now: datetime) -> None:
    """The check at verification did not happen: have the next cycle run do it."""
    domain = session.get(Domain, name, with_for_update=True)
    if domain is None:
        session.add(Domain(name=name, consecutive_failures=0, next_due_at=now))
    elif domain.next_due_at is None or domain.next_due_at > now:
        domain.next_due_at = now
