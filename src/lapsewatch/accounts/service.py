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
* an address's domain is checked the moment it is verified.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select
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
from lapsewatch.cycle.apply import apply_result
from lapsewatch.cycle.due import DueDomain, select_due
from lapsewatch.dates import isoformat
from lapsewatch.domains import DomainError, FreeProviders, load_free_providers, parse
from lapsewatch.mail import messages
from lapsewatch.mail.smtp import BackgroundMailer, Mail, Mailer, MailError, SmtpMailer
from lapsewatch.schedule import Policy
from lapsewatch.store.db import make_sessionmaker
from lapsewatch.store.models import Account, Domain, Email

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

_USERNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,48}[A-Za-z0-9])?$")
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
        """Create an account with one unverified primary address and mail its verification link."""
        username = check_username(username)
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
                outcome: AccountError | tuple[int, int, str] = RateLimited(
                    "too many sign-ups from here; try again later"
                )
            else:
                outcome = self._create_account(session, username, password_hash, parsed, now)
        if isinstance(outcome, AccountError):
            raise outcome
        account_id, email_id, token = outcome
        sent = self._send(
            messages.verification_mail(
                address=parsed.address,
                username=username,
                url=messages.link(self.settings.base_url, messages.VERIFY_EMAIL_PATH, token),
                ttl=self.settings.verify_token_ttl,
            )
        )
        return SignedUp(account_id, username, email_id, parsed.address, sent)

    def _create_account(
        self, session: Session, username: str, password_hash: str, parsed: _Address, now: datetime
    ) -> AccountError | tuple[int, int, str]:
        if _account_by_username(session, username) is not None:
            return UsernameTaken(f"the username {username!r} is taken")
        if _email_by_address(session, parsed.address) is not None:
            return AddressInUse("this address is already used by an account")
        account = Account(
            username=username, created_at=now, password_hash=password_hash, projects=[]
        )
        email = parsed.new_email(primary=True)
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
        token = tokens.issue(
            session,
            TokenKind.VERIFY_EMAIL,
            account_id=account.id,
            email_id=email.id,
            now=now,
            ttl=self.settings.verify_token_ttl,
        )
        return account.id, email.id, token

    def add_email(self, account_id: int, address: str) -> EmailAdded:
        """Add an unverified address to the logged-in account and mail its verification link."""
        parsed = self._parse_address(address)
        now = self._clock()
        with self._sessions.begin() as session:
            outcome = self._add_email(session, account_id, parsed, now)
        if isinstance(outcome, AccountError):
            raise outcome
        email_id, username, token = outcome
        sent = self._send(
            messages.verification_mail(
                address=parsed.address,
                username=username,
                url=messages.link(self.settings.base_url, messages.VERIFY_EMAIL_PATH, token),
                ttl=self.settings.verify_token_ttl,
            )
        )
        return EmailAdded(email_id, parsed.address, sent)

    def _add_email(
        self, session: Session, account_id: int, parsed: _Address, now: datetime
    ) -> AccountError | tuple[int, str, str]:
        account = _account(session, account_id)
        if len(account.emails) >= self.settings.max_addresses:
            return TooManyAddresses(
                f"an account can have at most {self.settings.max_addresses} addresses"
            )
        if _email_by_address(session, parsed.address) is not None:
            return AddressInUse("this address is already used by an account")
        if not self._verification_allowed(session, account.id, now):
            return RateLimited("too many verification mails; try again later")
        email = parsed.new_email(primary=not account.emails)
        try:
            with session.begin_nested():
                account.emails.append(email)
                session.flush()
        except IntegrityError:
            return AddressInUse("this address is already used by an account")
        self._record_email_added(session, email, user_actor(account.username), now)
        token = tokens.issue(
            session,
            TokenKind.VERIFY_EMAIL,
            account_id=account.id,
            email_id=email.id,
            now=now,
            ttl=self.settings.verify_token_ttl,
        )
        return email.id, account.username, token

    def remove_email(self, account_id: int, email_id: int) -> None:
        """Remove an address; never the primary, never the last verified one.

        The last verified address is the only way a forgotten password comes
        back, so it goes only once another address is verified.
        """
        now = self._clock()
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
                account.emails.remove(email)
        if error is not None:
            raise error

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
                again = email.unverified_at is not None
                kind = TokenKind.REVERIFY_EMAIL if again else TokenKind.VERIFY_EMAIL
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
        with self._sessions.begin() as session:
            outcome = self._redeem_verification(session, token, session_account_id, now)
            if isinstance(outcome, EmailVerified) and not (
                outcome.already_verified or outcome.free_provider
            ):
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
        (:class:`RateLimited` once over); an unknown username costs the same
        hashing time as a wrong password and gets the same error.
        """
        now = self._clock()
        limits = self.settings.limits
        username = _clean(username, _MAX_IDENTIFIER)
        client = _clean_client(client)
        keys = [(self._limiter.key("login-user", username), limits.login_per_username)]
        if client is not None:
            keys.append((self._limiter.key("login-client", client), limits.login_per_client))
        with self._sessions.begin() as session:
            blocked = self._blocked(session, keys, now, event_kind="login.rate_limited")
            account = None if blocked else _account_by_username(session, username)
            stored = account.password_hash if account is not None else None
            account_id = account.id if account is not None else None
        if blocked is not None:
            raise blocked
        good = self._passwords.verify(stored, password)
        with self._sessions.begin() as session:
            outcome = self._after_password(
                session, account_id, good, password, keys, totp_code, recovery_code, client, now
            )
        if isinstance(outcome, AccountError):
            raise outcome
        return outcome

    def _after_password(
        self,
        session: Session,
        account_id: int | None,
        good: bool,
        password: str,
        keys: Sequence[tuple[str, Limit]],
        totp_code: str | None,
        recovery_code: str | None,
        client: str | None,
        now: datetime,
    ) -> AccountError | LoginResult:
        # Locked: a recovery code given here must not be spent by two logins at once.
        account = (
            session.get(Account, account_id, with_for_update=True)
            if account_id is not None
            else None
        )
        if account is None or not good:
            for key, limit in keys:
                self._limiter.hit(session, key, limit, now=now)
            if account is not None:
                record(
                    session,
                    at=now,
                    actor=user_actor(account.username),
                    kind="login.failed",
                    account_id=account.id,
                    after={"client": client, "reason": "password"},
                )
            return InvalidCredentials("wrong username or password")
        if account.password_hash and self._passwords.needs_rehash(account.password_hash):
            account.password_hash = self._passwords.hash(password)
        if account.totp_enabled:
            if totp_code is None and recovery_code is None:
                return LoginResult(
                    LoginStatus.SECOND_FACTOR_REQUIRED,
                    account.id,
                    account.username,
                    account.is_admin,
                )
            return self._second_factor(session, account, totp_code, recovery_code, client, now)
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
        now = self._clock()
        client = _clean_client(client)
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            outcome: AccountError | LoginResult
            if not account.totp_enabled:
                outcome = TotpNotEnabled("two-factor authentication is not enabled")
            else:
                outcome = self._second_factor(
                    session, account, totp_code, recovery_code, client, now
                )
        if isinstance(outcome, AccountError):
            raise outcome
        return outcome

    def _second_factor(
        self,
        session: Session,
        account: Account,
        totp_code: str | None,
        recovery_code: str | None,
        client: str | None,
        now: datetime,
    ) -> AccountError | LoginResult:
        limit = self.settings.limits.second_factor_per_account
        key = self._limiter.key("second-factor", str(account.id))
        blocked = self._blocked(session, [(key, limit)], now, event_kind="login.rate_limited")
        if blocked is not None:
            return blocked
        actor = user_actor(account.username)
        if totp_code is not None and account.totp_secret:
            timecode = matching_timecode(account.totp_secret, totp_code, now)
            # The unique event key refuses a code that already logged in once.
            if timecode is not None and record_once(
                session,
                key=f"login.totp:{account.id}:{timecode}",
                at=now,
                actor=actor,
                kind="login.succeeded",
                account_id=account.id,
                after={"client": client, "method": "totp"},
            ):
                return self._logged_in(account, used_recovery_code=False)
        elif recovery_code is not None:
            normalized = normalize_recovery_code(recovery_code)
            match = None
            if normalized is not None:
                match = next(
                    (h for h in account.recovery_codes if self._passwords.verify(h, normalized)),
                    None,
                )
            if match is not None:
                account.recovery_codes = [h for h in account.recovery_codes if h != match]
                left = len(account.recovery_codes)
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
                    after={"client": client, "method": "recovery_code"},
                )
                return self._logged_in(account, used_recovery_code=True)
        self._limiter.hit(session, key, limit, now=now)
        record(
            session,
            at=now,
            actor=actor,
            kind="login.failed",
            account_id=account.id,
            after={"client": client, "reason": "second_factor"},
        )
        return InvalidSecondFactor("wrong or already used code")

    @staticmethod
    def _logged_in(account: Account, *, used_recovery_code: bool) -> LoginResult:
        return LoginResult(
            LoginStatus.OK,
            account.id,
            account.username,
            account.is_admin,
            used_recovery_code=used_recovery_code,
            recovery_codes_left=len(account.recovery_codes),
        )

    # ----------------------------------------------------------------------------- TOTP

    def begin_totp_setup(self, account_id: int) -> TotpSetup:
        """A fresh secret to show; nothing is stored until :meth:`confirm_totp`."""
        with self._sessions() as session:
            account = _account(session, account_id)
            if account.totp_enabled:
                raise TotpAlreadyEnabled("two-factor authentication is already enabled")
            secret = new_secret()
            return TotpSetup(secret, provisioning_uri(secret, account.username))

    def confirm_totp(self, account_id: int, secret: str, code: str) -> RecoveryCodes:
        """Enable 2FA once the app shows a matching code; return the recovery codes (once)."""
        now = self._clock()
        if matching_timecode(secret, code, now) is None:
            raise InvalidSecondFactor("that code does not match; check the app's clock and retry")
        codes = new_recovery_codes(self.settings.recovery_code_count)
        hashes = [self._passwords.hash(normalize_recovery_code(c) or c) for c in codes]
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            if account.totp_enabled:
                raise TotpAlreadyEnabled("two-factor authentication is already enabled")
            account.totp_enabled = True
            account.totp_secret = secret
            account.recovery_codes = hashes
            record(
                session,
                at=now,
                actor=user_actor(account.username),
                kind="totp.enabled",
                account_id=account.id,
                before={"totp_enabled": False},
                after={"totp_enabled": True, "recovery_codes": len(hashes)},
            )
        return RecoveryCodes(codes)

    def disable_totp(self, account_id: int, password: str) -> None:
        """Turn 2FA off; needs the password, so a hijacked session alone cannot."""
        now = self._clock()
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            if not account.totp_enabled:
                raise TotpNotEnabled("two-factor authentication is not enabled")
            error = self._password_error(session, account, password, now)
            if error is None:
                account.totp_enabled = False
                account.totp_secret = None
                account.recovery_codes = []
                record(
                    session,
                    at=now,
                    actor=user_actor(account.username),
                    kind="totp.disabled",
                    account_id=account.id,
                    before={"totp_enabled": True},
                    after={"totp_enabled": False},
                )
        if error is not None:
            raise error

    def regenerate_recovery_codes(self, account_id: int, password: str) -> RecoveryCodes:
        """New codes replace all the old ones (after a few were used, or if they leaked)."""
        now = self._clock()
        codes = new_recovery_codes(self.settings.recovery_code_count)
        hashes = [self._passwords.hash(normalize_recovery_code(c) or c) for c in codes]
        with self._sessions.begin() as session:
            account = _account(session, account_id, lock=True)
            if not account.totp_enabled:
                raise TotpNotEnabled("two-factor authentication is not enabled")
            error = self._password_error(session, account, password, now)
            if error is None:
                before = len(account.recovery_codes)
                account.recovery_codes = hashes
                record(
                    session,
                    at=now,
                    actor=user_actor(account.username),
                    kind="totp.recovery_codes_regenerated",
                    account_id=account.id,
                    before={"recovery_codes": before},
                    after={"recovery_codes": len(hashes)},
                )
        if error is not None:
            raise error
        return RecoveryCodes(codes)

    # ------------------------------------------------------------------------- passwords

    def change_password(self, account_id: int, current_password: str, new_password: str) -> None:
        """Change a known password; open reset links die with the old password."""
        now = self._clock()
        with self._sessions.begin() as session:
            account = _account(session, account_id)
            username = account.username
            addresses = tuple(e.address for e in account.emails)
            error = self._password_error(session, account, current_password, now)
        if error is not None:
            raise error
        check_policy(
            new_password,
            username=username,
            addresses=addresses,
            minimum=self.settings.min_password_length,
            maximum=self.settings.max_password_length,
        )
        new_hash = self._passwords.hash(new_password)
        with self._sessions.begin() as session:
            account = _account(session, account_id)
            account.password_hash = new_hash
            tokens.revoke(session, (TokenKind.PASSWORD_RESET,), account_id=account.id, now=now)
            record(
                session,
                at=now,
                actor=user_actor(account.username),
                kind="password.changed",
                account_id=account.id,
            )

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
                session, self._limiter.key("reset-id", ident), limits.reset_per_identifier, now=now
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
        with self._sessions.begin() as session:
            outcome = self._redeem_reset(session, token, new_hash, now)
        if isinstance(outcome, AccountError):
            raise outcome
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
        return PasswordReset(account.id, account.username)

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
                len(account.recovery_codes) if account.totp_enabled else 0,
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

    def _password_error(
        self, session: Session, account: Account, password: str, now: datetime
    ) -> AccountError | None:
        """Re-check the password of a logged-in account, under the login limit: a
        stolen session must not become a password-guessing oracle."""
        limit = self.settings.limits.login_per_username
        key = self._limiter.key("login-user", account.username)
        blocked = self._blocked(session, [(key, limit)], now, event_kind="login.rate_limited")
        if blocked is not None:
            return blocked
        if self._passwords.verify(account.password_hash, password):
            return None
        self._limiter.hit(session, key, limit, now=now)
        return InvalidCredentials("wrong password")

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

    def new_email(self, *, primary: bool) -> Email:
        return Email(
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
    """The username, trimmed; raises :class:`InvalidUsername` for one sign-up would refuse."""
    username = (username or "").strip()
    if not _USERNAME.match(username):
        raise InvalidUsername(
            "a username has 1 to 50 letters, digits, '.', '_' or '-', "
            "and starts and ends with a letter or digit"
        )
    return username


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
    """Exact match first; otherwise a unique case-insensitive one (``Alice`` is ``alice``)."""
    if not username:
        return None
    rows = session.scalars(
        select(Account).where(func.lower(Account.username) == username.lower())
    ).all()
    exact = [a for a in rows if a.username == username]
    if exact:
        return exact[0]
    return rows[0] if len(rows) == 1 else None


def _email_by_address(session: Session, address: str) -> Email | None:
    rows = session.scalars(select(Email).where(func.lower(Email.address) == address.lower())).all()
    exact = [e for e in rows if e.address == address]
    if exact:
        return exact[0]
    return rows[0] if rows else None


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
