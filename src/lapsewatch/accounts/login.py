"""Login with a password and a second factor, sessions, TOTP set-up, recovery codes,
a password change, and the security overview.

Limits on password and code checks are counted *before* the check (see
:mod:`lapsewatch.accounts.ratelimit`), and a recovery code is spent by one
conditional UPDATE, so concurrency buys an attacker nothing. Against a stolen
session: turning 2FA on ends the other sessions, and the password is asked for
again before a change that guards the account (:meth:`LoginService.reauthenticate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from lapsewatch.accounts.core import (
    _MAX_IDENTIFIER,
    AccountCore,
    _account,
    _account_by_username,
    _bump_generation,
    _clean,
    _clean_client,
    _end_reset_links,
)
from lapsewatch.accounts.errors import (
    InvalidCredentials,
    InvalidSecondFactor,
    TotpAlreadyEnabled,
    TotpNotEnabled,
)
from lapsewatch.accounts.passwords import check_policy
from lapsewatch.accounts.results import (
    Advice,
    LoginResult,
    LoginStatus,
    RecoveryCodes,
    SecurityOverview,
    TotpSetup,
    build_address_state,
    build_recovery_options,
)
from lapsewatch.accounts.settings import Limit
from lapsewatch.accounts.totp import (
    matching_timecode,
    new_recovery_codes,
    new_secret,
    normalize_recovery_code,
    provisioning_uri,
)
from lapsewatch.names import username_key
from lapsewatch.store.events import record, record_once, user_actor
from lapsewatch.store.models import Account, Domain, RecoveryCode

__all__ = ["LoginService"]


class LoginService(AccountCore):
    """Who is logged in, with which factors, and what guards the account."""

    def login(
        self,
        session: Session,
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
        with self._probes() as side:  # no connection of the caller's held through Argon2
            found = _account_by_username(side, username)
            keys = self._login_keys(username, client, found)
            stored = found.password_hash if found is not None else None
            account_id = found.id if found is not None else None
        hits = self._reserve(session, keys, now, event_kind="login.rate_limited")
        good = self._passwords.verify(stored, password)
        # Hashed now, before this session writes; stored only if the hash is unchanged.
        rehash = good and stored is not None and self._passwords.needs_rehash(stored)
        new_hash = self._passwords.hash(password) if rehash else None
        outcome = self._after_password(
            session, account_id, stored, good, password, hits, client, now
        )
        if outcome.status is LoginStatus.SECOND_FACTOR_REQUIRED and (
            totp_code is not None or recovery_code is not None
        ):
            outcome = self._second_factor(
                session, outcome.account_id, totp_code, recovery_code, client
            )
        # Written last: the second factor's limit is reserved before this session writes.
        if new_hash is not None:  # only over the hash it replaces (not a new password)
            session.execute(
                update(Account)
                .where(Account.id == outcome.account_id, Account.password_hash == stored)
                .values(password_hash=new_hash)
                .execution_options(synchronize_session="fetch")
            )
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
        stored: str | None,
        good: bool,
        password: str,
        hits: list[int],
        client: str | None,
        now: datetime,
    ) -> LoginResult:
        """The outcome, decided on the account as it is now (read again after Argon2): a
        password changed or reset meanwhile fails the login, and 2FA turned on meanwhile
        is asked for."""
        account = _account(session, account_id, fresh=True) if account_id is not None else None
        if good and account is not None and account.password_hash != stored:
            # Changed during the check: a new password fails, another login's rehash of
            # this one does not (rare: the second Argon2 runs in the caller's session).
            good = self._passwords.verify(account.password_hash, password)
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
            raise InvalidCredentials("wrong username or password")
        self._refund(session, hits)
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
        session: Session,
        account_id: int,
        *,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        client: str | None = None,
    ) -> LoginResult:
        """Second step of a 2FA login; call only for an account whose password was just checked."""
        return self._second_factor(
            session, account_id, totp_code, recovery_code, _clean_client(client)
        )

    def _second_factor(
        self,
        session: Session,
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
        with self._probes() as side:  # no connection of the caller's held through Argon2
            found = _account(side, account_id)
            if not found.totp_enabled:
                raise TotpNotEnabled("two-factor authentication is not enabled")
            secret = found.totp_secret
            codes = [(c.id, c.code_hash) for c in found.unused_recovery_codes]
        hits = self._reserve(session, keys, now, event_kind="login.rate_limited")
        timecode: int | None = None
        code_id: int | None = None
        if totp_code is not None and secret:
            timecode = matching_timecode(secret, totp_code, now)
        elif recovery_code is not None:
            normalized = normalize_recovery_code(recovery_code)
            if normalized is not None:
                code_id = next((i for i, h in codes if self._passwords.verify(h, normalized)), None)
        account = _account(session, account_id, fresh=True)
        if not account.totp_enabled or account.totp_secret != secret:
            timecode = None  # 2FA turned off, or set up anew, during the check
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
            self._refund(session, hits)
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

    def end_sessions(self, session: Session, account_id: int) -> int:
        """End every session of the account (logout, "log out everywhere"); the new
        generation, which a session that should live on (this one) takes up."""
        now = self._clock()
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

    def reauthenticate(self, session: Session, account_id: int, password: str) -> None:
        """Ask for the password again before a change that guards the account; a
        stolen session cookie alone then cannot make it (raises on a wrong one)."""
        self._check_password(session, account_id, password)

    def _require_totp(self, account_id: int) -> None:
        """2FA must be on (read on the side connections: Argon2 comes next)."""
        with self._probes() as side:
            if not _account(side, account_id).totp_enabled:
                raise TotpNotEnabled("two-factor authentication is not enabled")

    def _check_password(self, session: Session, account_id: int, password: str) -> str | None:
        """Re-check the password of a logged-in account, under the login limit (reserved
        first): a stolen session must not become a password-guessing oracle. The hash it
        was checked against, for :func:`_unchanged` once the account is locked."""
        now = self._clock()
        with self._probes() as side:  # no connection of the caller's held through Argon2
            found = _account(side, account_id)
            name, stored = found.username_key, found.password_hash
        keys = [(self._limiter.key("login-user", name), self.settings.limits.login_per_username)]
        hits = self._reserve(session, keys, now, event_kind="login.rate_limited")
        if not self._passwords.verify(stored, password):
            raise InvalidCredentials("wrong password")
        self._refund(session, hits)
        return stored

    # ----------------------------------------------------------------------------- TOTP

    def begin_totp_setup(self, session: Session, account_id: int) -> TotpSetup:
        """A fresh secret to show, kept in the store (not the cookie) until confirmed."""
        account = _account(session, account_id, lock=True)
        if account.totp_enabled:
            raise TotpAlreadyEnabled("two-factor authentication is already enabled")
        secret = new_secret()
        account.totp_pending_secret = secret
        return TotpSetup(secret, provisioning_uri(secret, account.username))

    def confirm_totp(self, session: Session, account_id: int, code: str) -> RecoveryCodes:
        """Enable 2FA once the app shows a matching code; return the recovery codes (once).

        The confirming code's time step cannot log in again, and every other
        session ends: someone holding a stolen session must not stay in once the
        owner (or they) turn 2FA on.
        """
        now = self._clock()
        with self._probes() as side:  # no connection of the caller's held through Argon2
            pending = _account(side, account_id).totp_pending_secret
        timecode = matching_timecode(pending, code, now) if pending else None
        if pending is None or timecode is None:
            raise InvalidSecondFactor("that code does not match; check the app's clock and retry")
        codes = new_recovery_codes(self.settings.recovery_code_count)
        hashes = [self._passwords.hash(normalize_recovery_code(c) or c) for c in codes]
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
        self._queue_security_mails(session, account, "totp.enabled", "", now)
        return RecoveryCodes(codes, session_generation=generation)

    def disable_totp(self, session: Session, account_id: int, password: str) -> None:
        """Turn 2FA off; needs the password, so a hijacked session alone cannot."""
        now = self._clock()
        self._require_totp(account_id)
        checked = self._check_password(session, account_id, password)
        account = _unchanged(_account(session, account_id, lock=True), checked)
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
        self._queue_security_mails(session, account, "totp.disabled", "", now)

    def regenerate_recovery_codes(
        self, session: Session, account_id: int, password: str
    ) -> RecoveryCodes:
        """New codes replace all the old ones (after a few were used, or if they leaked)."""
        now = self._clock()
        self._require_totp(account_id)
        checked = self._check_password(session, account_id, password)
        codes = new_recovery_codes(self.settings.recovery_code_count)
        hashes = [self._passwords.hash(normalize_recovery_code(c) or c) for c in codes]
        account = _unchanged(_account(session, account_id, lock=True), checked)
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
        self._queue_security_mails(session, account, "totp.recovery_codes_regenerated", "", now)
        return RecoveryCodes(codes)

    # ------------------------------------------------------------------------- passwords

    def change_password(
        self, session: Session, account_id: int, current_password: str, new_password: str
    ) -> int:
        """Change a known password; open reset links and every other session die with
        the old password. Returns the new session generation (for this session)."""
        now = self._clock()
        with self._probes() as side:  # no connection of the caller's held through Argon2
            found = _account(side, account_id)
            username = found.username
            addresses = tuple(e.address for e in found.emails)
        checked = self._check_password(session, account_id, current_password)
        check_policy(
            new_password,
            username=username,
            addresses=addresses,
            minimum=self.settings.min_password_length,
            maximum=self.settings.max_password_length,
        )
        new_hash = self._passwords.hash(new_password)
        account = _unchanged(_account(session, account_id, lock=True), checked)
        account.password_hash = new_hash
        generation = _bump_generation(account)
        _end_reset_links(session, account.id, now)
        record(
            session,
            at=now,
            actor=user_actor(account.username),
            kind="password.changed",
            account_id=account.id,
        )
        self._queue_security_mails(session, account, "password.changed", "", now)
        return generation

    # --------------------------------------------------------------------- what to show

    def security_overview(self, session: Session, account_id: int) -> SecurityOverview:
        """Each address with its state and why, the domain's verdict, and advice."""
        account = _account(session, account_id)
        emails = sorted(account.emails, key=lambda e: (not e.primary, e.id))
        names = {e.domain for e in emails}
        domains = {d.name: d for d in session.scalars(select(Domain).where(Domain.name.in_(names)))}
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


# --------------------------------------------------------------------------- functions


def _unchanged(account: Account, checked: str | None) -> Account:
    """The locked account, if its password is still the one just checked: a change or
    reset that landed during the check wins (the stale check does not overwrite it)."""
    if account.password_hash != checked:
        raise InvalidCredentials("your password was changed meanwhile; sign in again")
    return account


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
