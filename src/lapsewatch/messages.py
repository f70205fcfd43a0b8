"""The words of every mail: links (verification, password reset) and notices.

Plain text only, the link on a line of its own: it survives every mail client,
and nothing in a message loads remote content. Each text says why it was sent,
so an owner who did not ask can tell at once that someone else did.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlencode

from lapsewatch.smtp import Mail
from lapsewatch.verdict import Verdict

__all__ = [
    "LOGIN_PATH",
    "RESET_PASSWORD_PATH",
    "SECURITY_CHANGES",
    "SECURITY_PATH",
    "VERIFY_EMAIL_PATH",
    "address_taken_mail",
    "expiry_notice",
    "link",
    "reset_mail",
    "security_advice_notice",
    "security_change_mail",
    "unverified_notice",
    "verification_mail",
]

VERIFY_EMAIL_PATH = "/account/verify-email"
"""The web app's page that redeems a verification token (``?token=…``)."""
RESET_PASSWORD_PATH = "/account/reset-password"
"""The web app's page that asks for a new password for a reset token (``?token=…``)."""
LOGIN_PATH = "/account/login"
"""The web app's sign-in page."""
SECURITY_PATH = "/account/security"
"""The account's security page (addresses, their state, advice)."""

SIGNATURE = "-- \nlapsewatch: password resets only ever go to verified addresses."


def link(base_url: str, path: str, token: str | None = None) -> str:
    base = base_url.rstrip("/") + path
    return f"{base}?{urlencode({'token': token})}" if token is not None else base


def _hours(ttl: timedelta) -> str:
    hours = round(ttl.total_seconds() / 3600)
    return "1 hour" if hours == 1 else f"{hours} hours"


def _verdict_words(verdict: str) -> str:
    try:
        known = Verdict(verdict)
    except ValueError:
        return verdict
    if known is Verdict.MAIL_HOST_LAPSED:
        return "exposed: its mail goes to a host on a domain that has lapsed"
    return known.value.replace("_", " ")


def verification_mail(
    *, address: str, username: str, url: str, ttl: timedelta, again: bool = False
) -> Mail:
    """The link that proves ``address`` belongs to ``username``."""
    if again:
        intro = (
            f"Someone asked to verify {address} for the account {username!r}. This address "
            "was unverified before, or its domain lapsed or changed hands, so the link works "
            f"only while you are signed in as {username!r}. Verify it only if you own the "
            "domain and this mailbox."
        )
    else:
        intro = f"Someone added {address} to the account {username!r}. If it was you, verify it."
    body = (
        f"{intro}\n\n"
        f"{url}\n\n"
        f"The link works once and expires in {_hours(ttl)}. If you did not ask for this, "
        "ignore this mail: the address stays unverified.\n\n"
        f"{SIGNATURE}\n"
    )
    return Mail((address,), f"Verify your address {address}", body, "verify_email")


def reset_mail(
    *, address: str, username: str, url: str, ttl: timedelta, client: str | None = None
) -> Mail:
    """The password reset link, sent only to a verified address."""
    origin = f" from {client}" if client else ""
    body = (
        f"A password reset was requested{origin} for the account {username!r}.\n\n"
        f"{url}\n\n"
        f"The link works once and expires in {_hours(ttl)}. If you did not ask for this, "
        "ignore this mail: your password has not changed.\n\n"
        f"{SIGNATURE}\n"
    )
    return Mail((address,), f"Reset the password of {username}", body, "password_reset")


SECURITY_CHANGES = {
    "email.added": "the address {detail} was added",
    "email.verified": "the address {detail} was verified",
    "email.removed": "the address {detail} was removed",
    "email.primary_changed": "{detail} became the primary address",
    "totp.enabled": "two-factor authentication was turned on",
    "totp.disabled": "two-factor authentication was turned off",
    "totp.recovery_codes_regenerated": "new 2FA recovery codes were made",
    "password.changed": "the password was changed",
    "password.reset": "the password was reset through a link sent to {detail}",
}
"""What each security-relevant change is called in the mail every verified address gets."""


def security_change_mail(
    *, address: str, username: str, kind: str, detail: str, when: datetime, security_url: str
) -> Mail:
    """Tell every verified address of an account that something that guards it changed.

    A stolen session can change these; the mail is how the owner hears of it.
    """
    what = SECURITY_CHANGES.get(kind, kind).format(detail=detail)
    body = (
        f"On the account {username!r}, {what} ({when:%Y-%m-%d %H:%M} UTC).\n\n"
        "If that was you, there is nothing to do. If not, someone else is using your "
        "account: reset your password now, turn on two-factor authentication, and review "
        f"your addresses at\n\n{security_url}\n\n{SIGNATURE}\n"
    )
    subject = f"Security change on {username}: {what}"
    return Mail((address,), subject[:200], body, "security_change")


def address_taken_mail(*, address: str, sign_in_url: str) -> Mail:
    """Sent instead of telling a visitor that an address is already used (no enumeration)."""
    body = (
        f"Someone tried to create an account with {address}, which already belongs to "
        "an account here. No account was made.\n\n"
        f"If it was you, sign in instead (or reset your password): {sign_in_url}\n\n"
        f"If it was not you, ignore this mail.\n\n{SIGNATURE}\n"
    )
    return Mail((address,), "Sign-up attempt with your address", body, "address_taken")


def unverified_notice(address: str, domain: str, verdict: str, reason: str) -> tuple[str, str]:
    """(subject, body) telling the owner why an address was unverified: the notice the
    check cycle queues (``cycle.apply``), and the words for any other caller."""
    subject = f"Your address {address} was unverified"
    body = (
        f"Your address {address} was unverified because its domain {domain} is "
        f"{_verdict_words(verdict)}: {reason}\n\n"
        "Password resets are never sent to an unverified address. If you still own the "
        "domain, renew it and verify the address again from your account page. Consider "
        "enabling two-factor authentication and adding a second verified address at a "
        "well-known mail provider.\n\n"
        f"{SIGNATURE}\n"
    )
    return subject, body


def expiry_notice(
    *, domain: str, expires_at: datetime, addresses: tuple[str, ...], now: datetime
) -> tuple[str, str]:
    """(subject, body) warning that the domain behind ``addresses`` expires soon."""
    day = expires_at.date().isoformat()
    days = max(0, (expires_at - now).days)
    shown = ", ".join(addresses)
    subject = f"Your domain {domain} expires on {day}"
    body = (
        f"Your domain {domain} expires on {day} (in {days} days), according to its "
        f"registry. Your account uses it for: {shown}.\n\n"
        "If you keep the domain, renew it before then. If it lapses, the address is "
        "unverified and password resets stop going there, because whoever registers "
        "the domain next could read its mail. If you no longer need it, add and "
        "verify another address now, ideally at a well-known mail provider.\n\n"
        f"{SIGNATURE}\n"
    )
    return subject, body


def security_advice_notice(*, address: str, totp_enabled: bool) -> tuple[str, str]:
    """(subject, body) for an account whose only way back is one custom-domain address."""
    steps = []
    if not totp_enabled:
        steps.append(
            "- Enable two-factor authentication (an authenticator app), and keep the "
            "recovery codes somewhere safe."
        )
    steps.append(
        "- Add a second address at a well-known mail provider and verify it, so that a "
        "password reset can still reach you if the domain ever lapses."
    )
    subject = "Keep your account recoverable"
    body = (
        f"The only verified address on your account is {address}, on a domain of your "
        "own. If that domain ever lapses, someone else can register it and receive its "
        "mail; lapsewatch then unverifies the address, and you could be left with no "
        "way to reset your password.\n\n" + "\n".join(steps) + f"\n\n{SIGNATURE}\n"
    )
    return subject, body
