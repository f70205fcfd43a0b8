"""Queue, once per account, the advice to enable 2FA and add a second verified address.

An account whose only verified address is on a custom domain is one lapsed
domain away from having no way back (or, before lapsewatch, from being taken
over). A well-known provider's domain does not lapse, so a second address there
keeps password resets possible. Sent once per account, ever: advice repeated
every week is advice ignored.

The rule lives here, once: :func:`single_custom_address` picks whom to advise,
and :func:`accounts_at_risk` (those of them without 2FA) is what the admin's
report lists as at risk.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, Subquery, case, func, select
from sqlalchemy.orm import Session

from lapsewatch.messages import security_advice_notice
from lapsewatch.store.events import SYSTEM, record_once
from lapsewatch.store.models import Account, Email, Notice

__all__ = [
    "KIND",
    "accounts_at_risk",
    "accounts_needing_advice",
    "queue_security_advice",
    "single_custom_address",
]

KIND = "account.security_advice"


def single_custom_address() -> Subquery:
    """(account_id, address, domain) of each account whose only verified address is
    on a custom domain: the one rule behind both the advice and "at risk".

    A second verified address anywhere, or a single one at a well-known provider
    (whose domain does not lapse), keeps a password reset possible.
    """
    return (
        select(
            Email.account_id,
            func.min(Email.address).label("address"),
            func.min(Email.domain).label("domain"),
        )
        .where(Email.verified.is_(True))
        .group_by(Email.account_id)
        .having(
            func.count() == 1,
            func.max(case((Email.free_provider.is_(True), 1), else_=0)) == 0,
        )
        .subquery("single_custom_address")
    )


def accounts_at_risk() -> Select[str, str, str]:
    """(username, address, domain) of the accounts one lapsed domain away from a
    takeover: :func:`single_custom_address` without 2FA.

    With 2FA a reset password alone does not sign anyone in, so such an account
    risks losing its way back (it still gets the advice), not a takeover. The
    report lists exactly these.
    """
    single = single_custom_address()
    return (
        select(Account.username, single.c.address, single.c.domain)
        .join(single, single.c.account_id == Account.id)
        .where(Account.totp_enabled.is_(False))
    )


def accounts_needing_advice(session: Session) -> list[tuple[int, str, bool]]:
    """(account id, its single verified address, 2FA on) for every account of
    :func:`single_custom_address`: those at risk, and those with 2FA, who still
    need a second address to keep a way back."""
    single = single_custom_address()
    rows = session.execute(
        select(Account.id, single.c.address, Account.totp_enabled)
        .join(single, single.c.account_id == Account.id)
        .order_by(Account.id)
    )
    return [(account_id, address, bool(totp)) for account_id, address, totp in rows]


def queue_security_advice(session: Session, *, now: datetime) -> int:
    """Queue the advice for accounts that need it and never got it; how many were new."""
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
