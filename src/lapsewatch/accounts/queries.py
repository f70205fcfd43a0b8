"""The read side of accounts: one account with each address's state and why.

Read-only, plain frozen dataclasses out, so the CLI, the web pages and the
JSON API show the same thing and none of them holds a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, select

from lapsewatch.store.models import Account, Domain, Email

__all__ = ["AccountView", "EmailView", "UnknownUsername", "show_account"]


class UnknownUsername(LookupError):
    """No account has that username."""


@dataclass(frozen=True, slots=True)
class EmailView:
    address: str
    domain: str
    free_provider: bool
    primary: bool
    verified: bool
    verified_at: datetime | None
    unverified_at: datetime | None
    unverify_reason: str | None
    """The verdict that made lapsewatch unverify the address."""
    reason: str | None
    """That verdict's one-line reason, citing the evidence."""
    verdict: str | None
    """The domain's last verdict; ``None`` when never checked or a free provider."""


@dataclass(frozen=True, slots=True)
class AccountView:
    username: str
    totp: bool
    projects: tuple[str, ...]
    emails: tuple[EmailView, ...]
    """Primary address first, then in the order they were added."""


def show_account(bind: Engine | Connection, username: str) -> AccountView:
    """The account ``username``; raises :class:`UnknownUsername`."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return show_account(conn, username)
    account = bind.execute(
        select(Account.id, Account.username, Account.totp_enabled, Account.projects).where(
            Account.username == username
        )
    ).one_or_none()
    if account is None:
        raise UnknownUsername(username)
    rows = bind.execute(
        select(
            Email.address,
            Email.domain,
            Email.free_provider,
            Email.primary,
            Email.verified,
            Email.verified_at,
            Email.unverified_at,
            Email.unverify_reason,
            Email.unverify_detail,
            Domain.last_verdict,
        )
        .outerjoin(Domain, Domain.name == Email.domain)
        .where(Email.account_id == account.id)
        .order_by(Email.primary.desc(), Email.id)
    )
    return AccountView(
        username=account.username,
        totp=account.totp_enabled,
        projects=tuple(account.projects),
        emails=tuple(
            EmailView(
                address=row.address,
                domain=row.domain,
                free_provider=row.free_provider,
                primary=row.primary,
                verified=row.verified,
                verified_at=row.verified_at,
                unverified_at=row.unverified_at,
                unverify_reason=row.unverify_reason,
                reason=row.unverify_detail,
                verdict=row.last_verdict,
            )
            for row in rows
        ),
    )
