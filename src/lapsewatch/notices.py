"""What a queued notice is, and who it goes to. The outbox (and anything that shows
notices) resolves recipients at send time, never at queue time.

Every mail goes through the outbox: the cycle's and the mail jobs' notices, and the
account side's links and security mails. A mail with a link (verification, password
reset) is queued as an intent, with no body: the outbox makes the link's token when
it sends (:mod:`lapsewatch.mail.links`), so no usable token rests in the database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lapsewatch.store.models import Email, Notice

__all__ = [
    "LINK_KINDS",
    "PASSWORD_RESET",
    "TO_UNVERIFIED",
    "VERIFY_EMAIL",
    "dropped",
    "forget_resets",
    "queue",
    "recipients",
]

VERIFY_EMAIL = "verify_email"
PASSWORD_RESET = "password_reset"
LINK_KINDS = frozenset({VERIFY_EMAIL, PASSWORD_RESET})
"""Kinds whose body is made when sent, with a fresh token for its one address."""
TO_UNVERIFIED = frozenset({VERIFY_EMAIL})
"""Kinds for an address not verified yet: sent while it is still unverified."""


def queue(
    session: Session,
    *,
    account_id: int,
    kind: str,
    now: datetime,
    subject: str = "",
    body: str = "",
    to_address: str | None = None,
    email_id: int | None = None,
    client: str | None = None,
) -> Notice:
    """Add a notice to the caller's transaction (flushed, so it has its id)."""
    notice = Notice(
        account_id=account_id,
        kind=kind,
        subject=subject,
        body=body,
        to_address=to_address,
        email_id=email_id,
        client=client,
        created_at=now,
    )
    session.add(notice)
    session.flush()
    return notice


def recipients(session: Session, notice: Notice, *, lock: bool = False) -> list[str]:
    """Who the notice goes to now.

    For one address of the account (``email_id``): that address, if it is still the
    account's and still verified (unverified, for a verification link); nobody
    otherwise, for good (:func:`dropped`). Else the notice's own address, or every
    address of the account verified right now. ``lock``: the address's row stays
    locked until ``session`` ends (the outbox, which makes a link on that answer).
    """
    if notice.email_id is not None:
        email = session.get(Email, notice.email_id, with_for_update=lock, populate_existing=lock)
        if email is None or email.account_id != notice.account_id:
            return []
        wanted = notice.kind not in TO_UNVERIFIED
        return [email.address] if bool(email.verified) is wanted else []
    if notice.to_address is not None:
        return [notice.to_address]
    return list(
        session.scalars(
            select(Email.address)
            .where(Email.account_id == notice.account_id, Email.verified.is_(True))
            .order_by(Email.id)
        )
    )


def forget_resets(session: Session, account_id: int) -> int:
    """Drop the account's reset links not sent yet: its password changed, so every open
    reset link dies (those sent are revoked as tokens); how many."""
    gone = session.execute(
        delete(Notice).where(
            Notice.account_id == account_id,
            Notice.kind == PASSWORD_RESET,
            Notice.sent_at.is_(None),
        )
    )
    return int(gone.rowcount)  # type: ignore[attr-defined]


def dropped(notice: Notice, to: list[str]) -> bool:
    """A notice for one address that is no longer in the state it was for: it is never
    sent (a notice for the whole account waits until the account has a verified address)."""
    return not to and notice.email_id is not None
