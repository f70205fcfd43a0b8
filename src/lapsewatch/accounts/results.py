"""What the account services return: frozen, typed, framework-free values.

Pages, the JSON API and the CLI render these; none of them holds a database
session or a model object, so nothing can be lazily loaded (or changed) later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from lapsewatch.store.models import Account, Domain, Email

__all__ = [
    "RESET_REQUESTED",
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
    "build_address_state",
    "build_recovery_options",
]


@dataclass(frozen=True)
class SignedUp:
    """What a sign-up did. Show the same page whatever it says (no enumeration)."""

    account_id: int | None
    """``None``: the address belongs to an account already; nothing was made and its
    owner was told by mail. Never tell the visitor."""
    username: str
    email_id: int | None
    address: str


@dataclass(frozen=True)
class EmailAdded:
    """The address was added and its verification link queued (sent once committed)."""

    email_id: int
    address: str


@dataclass(frozen=True)
class VerificationSent:
    """A new link was queued (sent once committed; the outbox keeps it until it is)."""

    email_id: int
    address: str


@dataclass(frozen=True)
class EmailVerified:
    account_id: int
    username: str
    email_id: int
    address: str
    domain: str
    free_provider: bool
    verified: bool
    """Still verified after the domain check (False: the domain has already lapsed)."""
    already_verified: bool = False
    checked: bool = False
    """The domain was checked just now (False: free provider, or the check failed)."""
    verdict: str | None = None
    reason: str | None = None


class LoginStatus(StrEnum):
    OK = "ok"
    SECOND_FACTOR_REQUIRED = "second_factor_required"
    """Password right; call :meth:`AccountService.complete_login` with a TOTP or recovery code."""


@dataclass(frozen=True)
class LoginResult:
    status: LoginStatus
    account_id: int
    username: str
    is_admin: bool
    used_recovery_code: bool = False
    recovery_codes_left: int | None = None
    """Set when 2FA is on: when it runs low, the page should suggest new codes."""

    @property
    def complete(self) -> bool:
        return self.status is LoginStatus.OK


@dataclass(frozen=True)
class TotpSetup:
    """Show the URI as a QR code (and the secret as text); the store keeps it until confirmed."""

    secret: str = field(repr=False)
    provisioning_uri: str = field(repr=False)


@dataclass(frozen=True)
class RecoveryCodes:
    """Shown once; only their hashes are kept."""

    codes: tuple[str, ...] = field(repr=False)
    session_generation: int | None = None
    """Set when turning 2FA on ended the other sessions: this session's new generation."""


@dataclass(frozen=True)
class ResetRequested:
    """The one answer to every reset request, whatever happened behind it."""

    message: str


RESET_REQUESTED = ResetRequested(
    "If that account or address exists and has a verified address, a link to reset the "
    "password has been sent to its verified addresses. Password resets are never sent to "
    "an unverified address. If your only address was unverified, sign in if you can "
    "(with a recovery code if you lost your authenticator) and verify an address again, "
    "or contact support."
)


@dataclass(frozen=True)
class PasswordReset:
    account_id: int
    username: str
    via: str = ""
    """The verified address the link was sent to."""


@dataclass(frozen=True)
class ResetTokenInfo:
    """What the "choose a new password" page may show before the form is sent."""

    username: str
    expires_at: datetime


@dataclass(frozen=True)
class RecoveryOptions:
    """How this account can get back in; for its owner (logged in) or for support."""

    by_mail: bool
    """A reset link can reach a verified address."""
    verified_addresses: tuple[str, ...]
    totp_enabled: bool
    recovery_codes_left: int
    contact_support: bool
    """No verified address: without the password, only support can help."""
    steps: tuple[str, ...]
    """What to tell the person, in order."""


class AddressStatus(StrEnum):
    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    """Was verified; lapsewatch unverified it because its domain lapsed (see the reason)."""
    NOT_VERIFIED = "not_verified"
    """Never verified (or the registry never said so)."""


@dataclass(frozen=True)
class AddressView:
    email_id: int
    address: str
    domain: str
    free_provider: bool
    primary: bool
    status: AddressStatus
    verified_at: datetime | None
    unverified_at: datetime | None
    unverify_reason: str | None
    """The verdict that unverified it (``redemption``, ``reregistered`` …)."""
    unverify_detail: str | None
    """That verdict's reason, citing the evidence."""
    domain_verdict: str | None
    """The domain's latest verdict; ``None`` when never checked (or a free provider)."""
    domain_reason: str | None
    domain_checked_at: datetime | None
    domain_registered_at: datetime | None
    domain_expires_at: datetime | None


@dataclass(frozen=True)
class Advice:
    enable_2fa: bool
    add_well_known_address: bool
    """The only verified address is on a custom domain: add one at a well-known provider."""
    verify_an_address: bool
    """No verified address at all: password reset by mail is impossible."""

    @property
    def any(self) -> bool:
        return self.enable_2fa or self.add_well_known_address or self.verify_an_address

    @property
    def notes(self) -> tuple[str, ...]:
        notes: list[str] = []
        if self.verify_an_address:
            notes.append(
                "No address on this account is verified, so a password reset cannot reach "
                "you. Verify an address again, or add one and verify it."
            )
        if self.add_well_known_address:
            notes.append(
                "Your only verified address is on a domain of your own. If the domain ever "
                "lapses you lose the way back: add a second address at a well-known mail "
                "provider and verify it."
            )
        if self.enable_2fa:
            notes.append(
                "Enable two-factor authentication: a password alone is one lapsed domain "
                "away from being reset by someone else."
            )
        return tuple(notes)


@dataclass(frozen=True)
class SecurityOverview:
    account_id: int
    username: str
    totp_enabled: bool
    recovery_codes_left: int
    addresses: tuple[AddressView, ...]
    """Primary first, then in the order they were added."""
    advice: Advice
    recovery: RecoveryOptions


def build_recovery_options(account: Account) -> RecoveryOptions:
    """How ``account`` can get back in, from its addresses and 2FA state."""
    verified = tuple(e.address for e in account.emails if e.verified)
    codes = len(account.unused_recovery_codes) if account.totp_enabled else 0
    steps: list[str] = []
    if verified:
        steps.append(
            "A forgotten password can be reset by mail; the link goes to: "
            + ", ".join(verified)
            + "."
        )
    else:
        steps.append(
            "No address on this account is verified, so a password reset cannot be sent by mail."
        )
        second = (
            f" and your authenticator app (or one of your {codes} recovery codes)"
            if account.totp_enabled
            else ""
        )
        steps.append(
            f"If you know your password: sign in with it{second}, then verify an address "
            "again or add a new one."
        )
        steps.append(
            "If you lost the password too: contact support"
            + (
                ", who will ask you to prove ownership with your authenticator app or a "
                "recovery code."
                if account.totp_enabled
                else "."
            )
        )
    return RecoveryOptions(
        by_mail=bool(verified),
        verified_addresses=verified,
        totp_enabled=account.totp_enabled,
        recovery_codes_left=codes,
        contact_support=not verified,
        steps=tuple(steps),
    )


def build_address_state(email: Email, domain: Domain | None) -> AddressView:
    """One address as the security page shows it, with its domain's latest verdict."""
    if email.verified:
        status = AddressStatus.VERIFIED
    elif email.unverify_reason is not None:
        status = AddressStatus.UNVERIFIED
    else:
        status = AddressStatus.NOT_VERIFIED
    return AddressView(
        email_id=email.id,
        address=email.address,
        domain=email.domain,
        free_provider=email.free_provider,
        primary=email.primary,
        status=status,
        verified_at=email.verified_at,
        unverified_at=email.unverified_at,
        unverify_reason=email.unverify_reason,
        unverify_detail=email.unverify_detail,
        domain_verdict=domain.last_verdict if domain else None,
        domain_reason=domain.last_reason if domain else None,
        domain_checked_at=domain.last_checked_at if domain else None,
        domain_registered_at=domain.registered_at if domain else None,
        domain_expires_at=domain.expires_at if domain else None,
    )
