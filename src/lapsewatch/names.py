"""Account names and addresses as the store compares them: one rule, used everywhere.

A username or address is matched by its *key*, never by its text, so that
``Root``, full-width ``root`` and ``root`` are one account and
``CTX3@x.test`` is the address lapsewatch unverified as ``ctx3@x.test``. Sign-up,
the importer, the API push and the admin command all go through
:func:`check_username`; the store derives the keys itself (column defaults).

Usernames are NFKC-normalised and then limited to ASCII letters, digits, ``.``,
``_`` and ``-``: after NFKC that leaves no look-alike letters from other scripts
(a Cyrillic o for a Latin o), no zero-width or right-to-left characters, and
no surrounding space, so the confusable check is the character set itself.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["USERNAME_RULE", "InvalidName", "address_key", "check_username", "username_key"]

USERNAME_RULE = (
    "a username has 1 to 50 letters, digits, '.', '_' or '-' (ASCII), "
    "and starts and ends with a letter or digit"
)
_USERNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,48}[A-Za-z0-9])?")


class InvalidName(ValueError):
    """The text is not a username anyone may have; ``str()`` says why."""


def check_username(text: object) -> str:
    """The username as stored (NFKC form); raises :class:`InvalidName`.

    Nothing is trimmed: ``"root "`` is not ``root`` but an invalid name, so a
    pushed or imported name can never land on another account by accident.
    """
    if not isinstance(text, str):
        raise InvalidName("a username must be a string")
    name = unicodedata.normalize("NFKC", text)
    if not _USERNAME.fullmatch(name):
        raise InvalidName(USERNAME_RULE)
    return name


def username_key(name: str) -> str:
    """What makes two usernames the same account name."""
    return unicodedata.normalize("NFKC", name).casefold()


def address_key(address: str) -> str:
    """What makes two addresses the same address: case is not a difference.

    (RFC 5321 lets a server treat local parts case-sensitively; no real mail
    system does, and a case variant of a lapsed address must not count as new.)
    """
    return address.lower()
