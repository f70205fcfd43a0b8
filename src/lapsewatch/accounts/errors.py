"""The errors of the account services: one base class, one subclass per thing a page must say.

Callers (the web app, the CLI) catch :class:`AccountError` and show ``str(error)``:
every message is safe to show to the person who made the request, and none
tells an anonymous visitor whether an account or address exists.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "AccountError",
    "AccountNotFound",
    "AddressInUse",
    "AlreadyVerified",
    "CheckUnavailable",
    "EmailNotFound",
    "InvalidAddress",
    "InvalidCredentials",
    "InvalidSecondFactor",
    "InvalidUsername",
    "LastVerifiedAddress",
    "LoginRequired",
    "NotVerified",
    "PrimaryAddress",
    "RateLimited",
    "TokenExpired",
    "TokenInvalid",
    "TokenUsed",
    "TooManyAddresses",
    "TotpAlreadyEnabled",
    "TotpNotEnabled",
    "UsernameTaken",
    "WeakPassword",
]


class AccountError(Exception):
    """Base of every refusal by the account services; the message is user-facing."""


class InvalidUsername(AccountError):
    pass


class UsernameTaken(AccountError):
    pass


class WeakPassword(AccountError):
    pass


class InvalidAddress(AccountError):
    pass


class AddressInUse(AccountError):
    pass


class TooManyAddresses(AccountError):
    pass


class AccountNotFound(AccountError):
    """The logged-in account id no longer exists (deleted meanwhile)."""


class EmailNotFound(AccountError):
    """No such address *on this account*: other accounts' addresses are not revealed."""


class AlreadyVerified(AccountError):
    pass


class NotVerified(AccountError):
    pass


class PrimaryAddress(AccountError):
    """The primary address cannot be removed; make another one primary first."""


class LastVerifiedAddress(AccountError):
    """Removing it would leave no address a password reset can reach."""


class InvalidCredentials(AccountError):
    """Wrong username or password; deliberately the same for both."""


class InvalidSecondFactor(AccountError):
    pass


class TotpAlreadyEnabled(AccountError):
    pass


class TotpNotEnabled(AccountError):
    pass


class RateLimited(AccountError):
    """Too many attempts; ``retry_after`` says when the oldest one leaves the window."""

    def __init__(self, message: str, retry_after: datetime | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TokenInvalid(AccountError):
    """Unknown, malformed or revoked link (also: a newer link replaced it)."""


class TokenUsed(TokenInvalid):
    pass


class TokenExpired(TokenInvalid):
    pass


class CheckUnavailable(AccountError):
    """The registry could not be asked at verification, and the store knows a
    registration date to compare with: the link stays valid for a later try."""


class LoginRequired(AccountError):
    """A re-verification link only works for its logged-in owner."""
