"""The account side's links, made when the outbox sends them.

A verification or reset notice holds only its intent (the address, who asked); its
token is made here, in the outbox's claiming transaction, just before the mail goes
out. So no usable token rests in the database, and a link is made only for an
address still in the state it was asked for (:func:`lapsewatch.notices.recipients`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from lapsewatch import messages, notices
from lapsewatch.accounts import tokens
from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.accounts.tokens import TokenKind
from lapsewatch.smtp import Mail
from lapsewatch.store.models import Account, Email, Notice

__all__ = ["Links", "link_mail"]


@dataclass(frozen=True)
class Links:
    """Where links point and how long they live (from the account settings)."""

    base_url: str
    verify_ttl: timedelta
    reset_ttl: timedelta

    @classmethod
    def from_settings(cls, settings: AccountSettings) -> Links:
        return cls(settings.base_url, settings.verify_token_ttl, settings.reset_token_ttl)

    def expired(self, notice: Notice, now: datetime) -> bool:
        """Whether a link asked for this long ago would be dead already: it is never
        made (a reset asked for before a mail server's long outage does not come back)."""
        ttl = self.verify_ttl if notice.kind == notices.VERIFY_EMAIL else self.reset_ttl
        return now >= notice.created_at + ttl


def link_mail(session: Session, notice: Notice, links: Links, *, now: datetime) -> tuple[Mail, str]:
    """The mail of a link notice (:data:`lapsewatch.notices.LINK_KINDS`) and its token,
    stored (as a hash) in ``session``; call only once its recipient is known."""
    email = session.get_one(Email, notice.email_id)
    account = session.get_one(Account, notice.account_id)
    if notice.kind == notices.VERIFY_EMAIL:
        # Asked now: a domain found dangerous since the request gets a login-bound link.
        kind = tokens.verification_kind(session, email)
        tokens.revoke_verification(session, email, now=now)
        token = tokens.issue(
            session, kind, account_id=account.id, email_id=email.id, now=now, ttl=links.verify_ttl
        )
        mail = messages.verification_mail(
            address=email.address,
            username=account.username,
            url=messages.link(links.base_url, messages.VERIFY_EMAIL_PATH, token),
            ttl=links.verify_ttl,
            again=kind is TokenKind.REVERIFY_EMAIL,
        )
        return mail, token
    if notice.kind == notices.PASSWORD_RESET:
        token = tokens.issue(
            session,
            TokenKind.PASSWORD_RESET,
            account_id=account.id,
            email_id=email.id,
            now=now,
            ttl=links.reset_ttl,
        )
        mail = messages.reset_mail(
            address=email.address,
            username=account.username,
            url=messages.link(links.base_url, messages.RESET_PASSWORD_PATH, token),
            ttl=links.reset_ttl,
            client=notice.client,
        )
        return mail, token
    raise ValueError(f"notice {notice.id}: {notice.kind!r} is not a link")
