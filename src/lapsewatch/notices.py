"""Who a queued notice goes to. The mailer (and anything that shows notices)
resolves recipients at send time, never at queue time."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lapsewatch.store.models import Email, Notice

__all__ = ["recipients"]


def recipients(session: Session, notice: Notice) -> list[str]:
    """The notice's own address, or every address of the account verified right now."""
    if notice.to_address is not None:
        return [notice.to_address]
    return list(
        session.scalars(
            select(Email.address)
            .where(Email.account_id == notice.account_id, Email.verified.is_(True))
            .order_by(Email.id)
        )
    )
