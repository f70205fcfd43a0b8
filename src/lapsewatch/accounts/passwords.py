"""Password (and recovery code) hashing with Argon2id, and the password policy.

Argon2id because it is memory-hard (GPU guessing of a leaked table is slow)
and the current OWASP/RFC 9106 recommendation. The cost is a parameter so
tests can use argon2's cheapest profile; production keeps the library default.
"""

from __future__ import annotations

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import CHEAPEST

from lapsewatch.accounts.errors import WeakPassword

__all__ = ["Passwords", "check_policy"]


class Passwords:
    """Hash and verify secrets; a wrong or malformed hash is simply ``False``."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher(type=Type.ID)
        # Verified against when the username is unknown, so that an unknown and
        # a known username cost the same time (no enumeration by timing).
        self._dummy = self._hasher.hash("lapsewatch dummy password")

    @classmethod
    def cheapest(cls) -> Passwords:
        """Argon2's minimal parameters: for tests only, never for real accounts."""
        return cls(PasswordHasher.from_parameters(CHEAPEST))

    def hash(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def verify(self, stored: str | None, secret: str) -> bool:
        """Constant work whether or not there is a stored hash."""
        try:
            return self._hasher.verify(stored or self._dummy, secret) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """True after the cost parameters were raised: rehash on the next good login."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    def burn(self, secret: str) -> None:
        """Do the work of one verification and throw the answer away (timing equaliser)."""
        self.verify(None, secret)


def check_policy(
    password: str, *, username: str, addresses: tuple[str, ...] = (), minimum: int, maximum: int
) -> None:
    """Refuse passwords that are too short, huge, or just the account's own name or address.

    No composition rules (NIST SP 800-63B): length and "not your own name" are
    what stops guessing; forced symbols only make people write passwords down.
    """
    if len(password) < minimum:
        raise WeakPassword(f"the password must have at least {minimum} characters")
    if len(password) > maximum:
        raise WeakPassword(f"the password must have at most {maximum} characters")
    lowered = password.strip().lower()
    if lowered == username.lower():
        raise WeakPassword("the password must not be the username")
    for address in addresses:
        if lowered in (address.lower(), address.split("@")[0].lower()):
            raise WeakPassword("the password must not be your email address")
    if len(set(password)) < 3:
        raise WeakPassword("the password must not repeat one or two characters")
