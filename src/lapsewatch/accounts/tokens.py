"""Single-use, expiring secrets sent by mail: address verification and password reset.

The token is 256 random bits (``secrets``), so it needs no signature: nobody
can guess one, and only its SHA-256 is stored, so a database leak hands out no
working link. Redeeming is an atomic ``UPDATE ... WHERE used_at IS NULL``, so
two clicks racing on one link cannot both succeed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from lapsewatch.accounts.errors import TokenExpired, TokenInvalid, TokenUsed
from lapsewatch.names import address_key
from lapsewatch.store.models import AddressHistory, Domain, Email, Token

__all__ = [
    "TokenKind",
    "consume",
    "digest",
    "issue",
    "new_token",
    "peek",
    "retire",
    "revoke",
    "revoke_sent_to",
    "revoke_verification",
    "verification_kind",
]

_MAX_TOKEN_LENGTH = 200
"""Ours are 43 characters; anything much longer is not worth hashing."""
_IN_BATCH = 1000
"""Ids per ``IN (...)``: far below SQLite's and PostgreSQL's bind limits."""


class TokenKind(StrEnum):
    VERIFY_EMAIL = "verify_email"
    """Sign-up or a newly added address: any holder of the link may redeem it."""
    REVERIFY_EMAIL = "reverify_email"
    """An address lapsewatch unverified: only its logged-in owner may redeem it."""
    PASSWORD_RESET = "password_reset"


def verification_kind(session: Session, email: Email) -> TokenKind:
    """A login-bound link for an address that may now be read by someone else: one
    lapsewatch unverified (even if it was removed since), or any address on a
    domain once found dangerous. A plain link otherwise. Asked when the link is made
    (the outbox, at send time), so a domain found dangerous meanwhile counts."""
    if email.unverified_at is not None:
        return TokenKind.REVERIFY_EMAIL
    if session.get(AddressHistory, address_key(email.address)) is not None:
        return TokenKind.REVERIFY_EMAIL
    domain = session.get(Domain, email.domain)
    if domain is not None and domain.dangerous_at is not None:
        return TokenKind.REVERIFY_EMAIL
    return TokenKind.VERIFY_EMAIL


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def issue(
    session: Session,
    kind: TokenKind,
    *,
    account_id: int,
    email_id: int | None,
    now: datetime,
    ttl: timedelta,
    token: str | None = None,
) -> str:
    """Store a new token's hash and return the token itself (to be mailed, never stored)."""
    token = token or new_token()
    session.add(
        Token(
            kind=kind.value,
            account_id=account_id,
            email_id=email_id,
            token_hash=digest(token),
            created_at=now,
            expires_at=now + ttl,
        )
    )
    return token


def _find(session: Session, kinds: tuple[TokenKind, ...], token: str) -> Token:
    if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN_LENGTH:
        raise TokenInvalid("this link is not valid")
    row = session.scalars(select(Token).where(Token.token_hash == digest(token))).one_or_none()
    if row is None or row.kind not in {k.value for k in kinds}:
        raise TokenInvalid("this link is not valid")
    # The lookup is by hash, so this compare is belt and braces against a broken index.
    if not hmac.compare_digest(row.token_hash, digest(token)):
        raise TokenInvalid("this link is not valid")
    return row


def peek(session: Session, kinds: tuple[TokenKind, ...], token: str, *, now: datetime) -> Token:
    """The unused, unexpired token row, without using it up (for a confirmation page)."""
    row = _find(session, kinds, token)
    if row.used_at is not None:
        raise TokenUsed("this link has already been used")
    if row.expires_at <= now:
        raise TokenExpired("this link has expired; ask for a new one")
    return row


def consume(session: Session, kinds: tuple[TokenKind, ...], token: str, *, now: datetime) -> Token:
    """Mark the token used and return its row; raise a :class:`TokenInvalid` subclass."""
    row = peek(session, kinds, token, now=now)
    changed = session.execute(  # type: ignore[attr-defined]  # rowcount: CursorResult
        update(Token)
        .where(Token.id == row.id, Token.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        raise TokenUsed("this link has already been used")
    set_committed_value(row, "used_at", now)
    return row


def revoke(
    session: Session,
    kinds: tuple[TokenKind, ...],
    *,
    account_id: int,
    now: datetime,
    email_id: int | None = None,
) -> int:
    """Use up every open token of these kinds (of one address, if given); how many."""
    query = (
        update(Token)
        .where(
            Token.account_id == account_id,
            Token.kind.in_([k.value for k in kinds]),
            Token.used_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if email_id is not None:
        query = query.where(Token.email_id == email_id)
    return int(session.execute(query).rowcount)  # type: ignore[attr-defined]


def revoke_verification(session: Session, email: Email, *, now: datetime) -> int:
    """Only the newest verification link of an address works: an older one may sit in a
    mailbox we doubt. Called before a new one is asked for and before it is made."""
    return revoke(
        session,
        (TokenKind.VERIFY_EMAIL, TokenKind.REVERIFY_EMAIL),
        account_id=email.account_id,
        email_id=email.id,
        now=now,
    )


def retire(session: Session, token: str, *, now: datetime) -> None:
    """Use up one token that never reached its owner (its mail was not sent)."""
    session.execute(
        update(Token)
        .where(Token.token_hash == digest(token), Token.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )


def revoke_sent_to(db: Session | Connection, email_ids: Sequence[int], *, now: datetime) -> int:
    """Use up every open token of any kind sent to these addresses; how many.

    What unverifying an address does (the check cycle's, an import's, an API push's):
    a reset or verification link sent before may sit in a mailbox that is no longer
    the owner's, and a later verification of the address must not bring it back.
    """
    revoked = 0
    ids = sorted(set(email_ids))
    for start in range(0, len(ids), _IN_BATCH):
        batch = ids[start : start + _IN_BATCH]
        result = db.execute(
            update(Token)
            .where(Token.email_id.in_(batch), Token.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        revoked += int(result.rowcount)  # type: ignore[attr-defined]
    return revoked
