"""Sign-up and an account's addresses: add, remove, make primary.

Sign-up and adding an address never say whether an address already has an
account (its owner is mailed instead), and an address that may now be read by
someone else gets only a login-bound verification link
(:func:`~lapsewatch.accounts.tokens.verification_kind`). Redeeming the links is
:mod:`lapsewatch.accounts.verification`'s job.

Nobody can squat on someone else's address: one a web account added but never
verified is held for it only for the verification link's lifetime from its first
adding (asking for new links does not extend that); after it, whoever verifies
first keeps the address (:meth:`AddressService._address_free`). An address of an
account the registry owns (an import, an API key) is never taken from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lapsewatch import messages, notices
from lapsewatch.accounts.core import (
    AccountCore,
    _account,
    _account_by_username,
    _clean_client,
    _email_by_address,
    _own_email,
)
from lapsewatch.accounts.errors import (
    AddressInUse,
    InvalidAddress,
    InvalidUsername,
    LastVerifiedAddress,
    NotVerified,
    PrimaryAddress,
    RateLimited,
    TooManyAddresses,
    UsernameTaken,
)
from lapsewatch.accounts.passwords import check_policy
from lapsewatch.accounts.results import EmailAdded, SignedUp
from lapsewatch.domains import DomainError, parse
from lapsewatch.names import InvalidName, address_key
from lapsewatch.names import check_username as _check_name
from lapsewatch.store.events import SYSTEM, record, user_actor
from lapsewatch.store.models import Account, Email, Event
from lapsewatch.store.work import savepoint

__all__ = ["WEB_OWNER", "AddressService", "check_username"]

WEB_OWNER = "web"
"""``accounts.owner`` of the web app's own accounts (sign-up, ``admin create-admin``)."""


class AddressService(AccountCore):
    """Sign-up and the logged-in owner's changes to their addresses."""

    def sign_up(
        self,
        session: Session,
        username: str,
        password: str,
        email: str,
        *,
        client: str | None = None,
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
        if client is not None and not self._limiter.allow(
            session,
            self._limiter.key("sign-up-client", client),
            self.settings.limits.sign_ups_per_client,
            now=now,
        ):
            raise RateLimited("too many sign-ups from here; try again later")
        account_id, email_id = self._create_account(session, username, password_hash, parsed, now)
        return SignedUp(account_id, username, email_id, parsed.address)

    def _create_account(
        self, session: Session, username: str, password_hash: str, parsed: _Address, now: datetime
    ) -> tuple[int | None, int | None]:
        """The new account's ids, its link queued; no ids when the address is someone
        else's (its owner is mailed instead of the visitor being told)."""
        if _account_by_username(session, username) is not None:
            raise UsernameTaken(f"the username {username!r} is taken")
        if not self._address_free(session, parsed.address, now):
            self._queue_address_taken(session, parsed.address, now)
            return None, None
        account = Account(
            username=username, created_at=now, password_hash=password_hash, projects=[]
        )
        email = parsed.new_email(primary=True, now=now)
        account.emails.append(email)
        try:
            # Added inside the savepoint, so a refused insert leaves nothing pending.
            with savepoint(session):
                session.add(account)
                session.flush()
        except IntegrityError:  # a concurrent sign-up took the name or the address
            raise UsernameTaken("that username or address was just taken") from None
        actor = user_actor(username)
        record(session, at=now, actor=actor, kind="account.created", account_id=account.id)
        self._record_email_added(session, email, actor, now)
        self._queue_link(session, email, notices.VERIFY_EMAIL, now)
        return account.id, email.id

    def _queue_address_taken(self, session: Session, address: str, now: datetime) -> None:
        """Tell the owner of ``address`` that someone tried to sign up with it."""
        email = _email_by_address(session, address)
        if email is None or email.unverified_at is not None:
            return  # gone since; or lapsewatch doubts who reads it now: nobody to tell
        mail = messages.address_taken_mail(
            address=address,
            sign_in_url=messages.link(self.settings.base_url, messages.LOGIN_PATH),
        )
        notice = notices.queue(
            session,
            account_id=email.account_id,
            kind=mail.kind,
            now=now,
            subject=mail.subject,
            body=mail.body,
            to_address=address,
        )
        self._send_after_commit(session, [notice.id])

    def add_email(self, session: Session, account_id: int, address: str) -> EmailAdded:
        """Add an unverified address to the logged-in account and mail its verification link."""
        parsed = self._parse_address(address)
        now = self._clock()
        account = _account(session, account_id)
        if len(account.emails) >= self.settings.max_addresses:
            raise TooManyAddresses(
                f"an account can have at most {self.settings.max_addresses} addresses"
            )
        stale = self._stale_holder(session, parsed.address, now)
        if stale is False:
            raise AddressInUse("this address is already used by an account")
        # Counted before this session writes (on SQLite a writing session holds the lock
        # the limiter's own transaction needs).
        if not self._verification_allowed(session, account.id, now):
            raise RateLimited("too many verification mails; try again later")
        if isinstance(stale, Email) and not self._drop_stale(session, stale, now):
            raise AddressInUse("this address is already used by an account")
        email = parsed.new_email(primary=not account.emails, now=now)
        try:
            with savepoint(session):
                account.emails.append(email)
                session.flush()
        except IntegrityError:
            raise AddressInUse("this address is already used by an account") from None
        self._record_email_added(session, email, user_actor(account.username), now)
        self._queue_link(session, email, notices.VERIFY_EMAIL, now)
        self._queue_security_mails(session, account, "email.added", email.address, now)
        return EmailAdded(email.id, parsed.address)

    def remove_email(self, session: Session, account_id: int, email_id: int) -> None:
        """Remove an address; never the primary, never the last verified one.

        The last verified address is the only way a forgotten password comes
        back, so it goes only once another address is verified.
        """
        now = self._clock()
        account = _account(session, account_id)
        email = _own_email(account, email_id)
        verified_others = [e for e in account.emails if e.verified and e.id != email.id]
        if email.primary:
            raise PrimaryAddress("make another verified address primary first")
        if email.verified and not verified_others:
            raise LastVerifiedAddress(
                "this is your only verified address; verify another one first"
            )
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
        self._queue_security_mails(session, account, "email.removed", email.address, now)
        account.emails.remove(email)
        session.flush()

    def set_primary(self, session: Session, account_id: int, email_id: int) -> None:
        """Make a verified address the primary one."""
        now = self._clock()
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
        self._queue_security_mails(session, account, "email.primary_changed", email.address, now)

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

    def _address_free(self, session: Session, address: str, now: datetime) -> bool:
        """Whether ``address`` may be added (or signed up with) by someone.

        Never while it is verified or lapsewatch ever unverified it, and never while an
        account the web app does not own has it (an import's or an API key's: the
        registry decides about those). An address a web account added but never
        verified is held for :attr:`AccountSettings.verify_token_ttl` from that
        account's first adding of it; after that it is free, whatever links were
        asked for since or however often it was removed and added again: the row
        is dropped (its links die) and whoever verifies first keeps the address.
        """
        stale = self._stale_holder(session, address, now)
        if stale is None or stale is False:
            return stale is None
        assert isinstance(stale, Email)
        return self._drop_stale(session, stale, now)

    def _stale_holder(self, session: Session, address: str, now: datetime) -> Email | bool | None:
        """Reading only: ``None`` when nobody has ``address``, ``False`` when it is taken,
        else the row of a web account whose hold on it ran out (:meth:`_drop_stale`)."""
        email = _email_by_address(session, address)
        if email is None:
            return None
        if not _never_verified(email) or email.account.owner != WEB_OWNER:
            return False
        held_since = _held_since(session, email)
        if held_since is not None and now < held_since + self.settings.verify_token_ttl:
            return False
        return email

    def _drop_stale(self, session: Session, stale: Email, now: datetime) -> bool:
        """Drop a row whose hold ran out (:meth:`_stale_holder`); whether the address is
        free now."""
        # Read again under a row lock: its holder may have verified it a moment ago (a
        # verified address is never dropped), or another newcomer dropped it already
        # (then this one trips over the winner's row and its unique address).
        email = session.scalar(
            select(Email)
            .where(Email.id == stale.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if email is None:
            return True
        if not _never_verified(email):
            return False
        record(
            session,
            at=now,
            actor=SYSTEM,
            kind="email.expired",
            account_id=email.account_id,
            domain=email.domain,
            before={"address": email.address, "verified": False},
            reason=(
                "never verified within "
                f"{_duration(self.settings.verify_token_ttl)} of being added; "
                "it was added again"
            ),
        )
        session.delete(email)
        session.flush()
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


def _never_verified(email: Email) -> bool:
    """Added, never verified and never unverified by lapsewatch (nothing to protect)."""
    return not email.verified and email.verified_at is None and email.unverified_at is None


def _held_since(session: Session, email: Email) -> datetime | None:
    """Since when the account that has this never-verified address has held it: the
    first time it added the address (a removal and a new adding restart nothing);
    ``None`` for a row older than ``added_at`` with no event to tell."""
    key = address_key(email.address)
    added = session.execute(
        select(Event.at, Event.after).where(
            Event.account_id == email.account_id,
            Event.kind == "email.added",
            Event.domain == email.domain,
        )
    ).all()
    times = [
        at
        for at, after in added
        if isinstance(after, dict) and address_key(str(after.get("address", ""))) == key
    ]
    if email.added_at is not None:
        times.append(email.added_at)
    return min(times, default=None)


def _duration(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:g} hours"


def check_username(username: str) -> str:
    """The username as stored; raises :class:`InvalidUsername` (the one rule,
    :func:`lapsewatch.names.check_username`)."""
    try:
        return _check_name(username)
    except InvalidName as exc:
        raise InvalidUsername(str(exc)) from None
