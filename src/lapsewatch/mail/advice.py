"""Queue, once per account, the advice to enable 2FA and add a second verified address.

An account whose only verified address is on a custom domain is one lapsed
domain away from having no way back (or, before lapsewatch, from being taken
over). A well-known provider's domain does not lapse, so a second address there
keeps password resets possible. Sent once per account, ever: advice repeated
every week is advice ignored.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lapsewatch.accounts.events import SYSTEM, record_once
from lapsewatch.mail.messages import security_advice_notice
from lapsewatch.store.models import Account, Email, Notice

__all__ = ["KIND", "accounts_needing_advice", "queue_security_advice"]

KIND = "account.security_advice"


def accounts_needing_advice(session: Session) -> list[tuple[int, str, bool]]:
    """(account id, its single verified address, 2FA on) for every account at risk."""
    single = (
        select(Email.account_id)
        .where(Email.verified.is_(True))
        .group_by(Email.account_id)
        .having(func.count() == 1)
        .subquery()
    )
    rows = session.execute(
        select(Account.id, Email.address, Account.totp_enabled)
        .join(Email, Email.account_id == Account.id)
        .where(
            Account.id.in_(select(single.c.account_id)),
            Email.verified.is_(True),
            Email.free_provider.is_(False),
        )
        .order_by(Account.id)
    )
    return [(account_id, address, bool(totp)) for account_id, address, totp in rows]


def queue_security_advice(session: Session, *, now: datetime) -> int:
    """Queue the advice for accounts at risk that never got it; how many were new."""
    queued = 0
    for account_id, address, totp_enabled in accounts_needing_advice(session):
        event_id = record_once(
            session,
            key=f"{KIND}:{account_id}",
            at=now,
            actor=SYSTEM,
            kind=KIND,
            account_id=account_id,
            after={"address": address, "totp_enabled": totp_enabled},
            reason="single verified address on a custom domain",
        )
        if event_id is None:
            continue
        subject, body = security_advice_notice(address=address, totp_enabled=totp_enabled)
        session.add(
            Notice(
                account_id=account_id,
                to_address=None,
                kind=KIND,
                subject=subject,
                body=body,
                created_at=now,
                event_id=event_id,
            )
        )
        queued += 1
    return queued
