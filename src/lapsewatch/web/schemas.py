"""The JSON API's wire format: typed pydantic models, documented field by field.

Kept apart from the store and the services so the API can stay stable while
they change; each model has a ``from_…`` constructor from a service result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, cast

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from lapsewatch.accounts.importer import ImportSummary
from lapsewatch.report import Report
from lapsewatch.web.queries import AddressView, DomainView, ObservationView
from lapsewatch.web.webhooks import NewWebhook, WebhookInfo

__all__ = [
    "AddressOut",
    "AddressPush",
    "DomainOut",
    "ErrorOut",
    "ImportOut",
    "ObservationOut",
    "PushedAddress",
    "ReportOut",
    "WebhookCreated",
    "WebhookIn",
    "WebhookOut",
]

AddressState = Literal["verified", "unverified", "not_verified"]
VerdictName = Literal[
    "registered",
    "expiring",
    "redemption",
    "pending_delete",
    "available",
    "reregistered",
    "for_sale",
    "mail_host_lapsed",
    "unknown",
]
"""Every ``lapsewatch.verdict.Verdict`` value (a test keeps the two in step)."""


def _verdict(value: str | None) -> VerdictName | None:
    """A stored verdict as the schema's type (the store only ever holds these values)."""
    return cast(VerdictName | None, value)


def _iso_text(value: object) -> object:
    """Only ISO 8601 text: a bare number would be read as seconds since 1970."""
    if not isinstance(value, str | datetime):
        raise ValueError("expected an ISO 8601 date and time with a time zone")
    return value


IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(_Model):
    detail: str = Field(description="What went wrong, for a person to read.")


# ----------------------------------------------------------------------------- addresses


class PushedAddress(_Model):
    username: str = Field(
        min_length=1,
        max_length=150,
        description="The registry's identifier of the account (username or account id).",
        examples=["maintainer"],
    )
    address: str = Field(min_length=3, max_length=320, examples=["m@example.org"])
    verified: bool = Field(
        strict=True, description="Whether the registry considers the address verified."
    )
    verified_at: IsoDatetime | None = Field(
        default=None,
        description="When it was verified (with a time zone). Needed to recognise a domain "
        "re-registered since; an address lapsewatch unverified is only verified again by a "
        "later date.",
    )
    primary: bool | None = Field(
        default=None,
        strict=True,
        description="Whether it is the account's primary address (omit: keep).",
    )


class AddressPush(_Model):
    addresses: list[PushedAddress] = Field(
        min_length=1, max_length=1000, description="At most 1,000 addresses per request."
    )


class Problem(_Model):
    index: int = Field(description="Position of the address in the request (from 0).")
    message: str


class ImportOut(_Model):
    received: int
    accounts_created: int
    accounts_updated: int
    emails_added: int
    emails_updated: int
    domains_added: int
    unchanged: int = Field(description="Addresses already stored exactly as pushed.")
    rejected: list[Problem] = Field(description="Addresses refused (nothing stored for them).")
    warnings: list[Problem]

    @classmethod
    def from_summary(cls, summary: ImportSummary, received: int) -> ImportOut:
        return cls(
            received=received,
            accounts_created=summary.accounts_created,
            accounts_updated=summary.accounts_updated,
            emails_added=summary.emails_added,
            emails_updated=summary.emails_updated,
            domains_added=summary.domains_added,
            unchanged=summary.unchanged,
            rejected=[Problem(index=p.line - 1, message=p.message) for p in summary.rejected],
            warnings=[Problem(index=p.line - 1, message=p.message) for p in summary.warnings],
        )


class AddressOut(_Model):
    address: str
    username: str
    domain: str = Field(description="The registrable domain that decides the address's fate.")
    free_provider: bool = Field(description="At a well-known mail provider (never checked).")
    primary: bool
    state: AddressState = Field(
        description="`unverified`: lapsewatch unverified it (see `unverify_reason`); "
        "`not_verified`: never verified, or unverified by the registry."
    )
    should_be_verified: bool = Field(
        description="Whether a password reset may be sent to this address now."
    )
    verified_at: datetime | None
    unverified_at: datetime | None
    unverify_reason: str | None = Field(
        description="The verdict that unverified it (a dangerous one: expiring, redemption, "
        "pending_delete, available, reregistered, for_sale, mail_host_lapsed)."
    )
    reason: str | None = Field(description="Why, citing the evidence.")
    domain_verdict: VerdictName | None = Field(description="The domain's latest verdict.")
    domain_reason: str | None
    domain_checked_at: datetime | None

    @classmethod
    def from_view(cls, view: AddressView) -> AddressOut:
        return cls(
            address=view.address,
            username=view.username,
            domain=view.domain,
            free_provider=view.free_provider,
            primary=view.primary,
            state=view.status.value,
            should_be_verified=view.status.value == "verified",
            verified_at=view.verified_at,
            unverified_at=view.unverified_at,
            unverify_reason=view.unverify_reason,
            reason=view.reason,
            domain_verdict=_verdict(view.domain_verdict),
            domain_reason=view.domain_reason,
            domain_checked_at=view.domain_checked_at,
        )


# ------------------------------------------------------------------------------- domains


class ObservationOut(_Model):
    source: str = Field(examples=["rdap"])
    outcome: str = Field(description="`answered`, `error` or `skipped`.")
    detail: str
    found: bool | None
    status: list[str] = Field(description="Normalised status tokens.")
    registered_at: datetime | None
    expires_at: datetime | None
    observed_at: datetime
    evidence: str | None = Field(description="The raw answer, when `evidence=true` was asked.")

    @classmethod
    def from_view(cls, view: ObservationView) -> ObservationOut:
        return cls(
            source=view.source,
            outcome=view.outcome,
            detail=view.detail,
            found=view.found,
            status=list(view.status),
            registered_at=view.registered_at,
            expires_at=view.expires_at,
            observed_at=view.observed_at,
            evidence=view.evidence,
        )


class DomainOut(_Model):
    domain: str
    verdict: VerdictName | None = Field(description="The latest verdict; null when never checked.")
    reason: str | None
    last_checked_at: datetime | None
    next_check_at: datetime | None = Field(description="Null: due now.")
    registered_at: datetime | None
    expires_at: datetime | None
    consecutive_failures: int
    addresses: int = Field(description="Addresses on this domain.")
    observations: list[ObservationOut] = Field(description="The latest answer of each source.")

    @classmethod
    def from_view(cls, view: DomainView) -> DomainOut:
        return cls(
            domain=view.name,
            verdict=_verdict(view.verdict),
            reason=view.reason,
            last_checked_at=view.last_checked_at,
            next_check_at=view.next_due_at,
            registered_at=view.registered_at,
            expires_at=view.expires_at,
            consecutive_failures=view.consecutive_failures,
            addresses=view.addresses_total,
            observations=[ObservationOut.from_view(o) for o in view.observations],
        )


# -------------------------------------------------------------------------------- report


class Count(_Model):
    name: str
    count: int


class AddressCountsOut(_Model):
    total: int
    verified: int
    unverified_by_lapsewatch: int
    never_verified: int
    unverified_other: int
    free_provider: int
    free_provider_verified: int


class DueOut(_Model):
    domain: str
    next_due_at: datetime | None
    last_verdict: VerdictName | None


class AtRiskOut(_Model):
    username: str
    address: str
    domain: str


class ReportOut(_Model):
    generated_at: datetime
    addresses: AddressCountsOut
    unverified_by_reason: list[Count]
    domains_total: int
    domains_by_verdict: list[Count] = Field(description="`never_checked` for no verdict yet.")
    domains_due: int
    next_due: list[DueOut]
    accounts_at_risk: list[AtRiskOut] = Field(
        description="No 2FA and a single verified address, on a custom domain."
    )
    accounts_at_risk_total: int

    @classmethod
    def from_report(cls, report: Report) -> ReportOut:
        counts = report.addresses
        return cls(
            generated_at=report.generated_at,
            addresses=AddressCountsOut(
                total=counts.total,
                verified=counts.verified,
                unverified_by_lapsewatch=counts.unverified_by_lapsewatch,
                never_verified=counts.never_verified,
                unverified_other=counts.unverified_other,
                free_provider=counts.free_provider,
                free_provider_verified=counts.free_provider_verified,
            ),
            unverified_by_reason=[Count(name=n, count=c) for n, c in report.unverified_by_reason],
            domains_total=report.domains_total,
            domains_by_verdict=[Count(name=n, count=c) for n, c in report.domains_by_verdict],
            domains_due=report.domains_due,
            next_due=[
                DueOut(
                    domain=d.domain,
                    next_due_at=d.next_due_at,
                    last_verdict=_verdict(d.last_verdict),
                )
                for d in report.next_due
            ],
            accounts_at_risk=[
                AtRiskOut(username=a.username, address=a.address, domain=a.domain)
                for a in report.accounts_at_risk
            ],
            accounts_at_risk_total=report.accounts_at_risk_total,
        )


# ------------------------------------------------------------------------------ webhooks


_PORT = (
    r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}"
    r"|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
)
WEBHOOK_URL = (
    r"^https?://[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
    + _PORT
    + r"(?:[/?#][\x21-\x7e]*)?$"
)
"""An http(s) URL with a host name (and port), in printable ASCII: said in the schema so
that clients (and fuzzers) know before they ask."""


class WebhookIn(_Model):
    url: str = Field(
        min_length=8,
        max_length=2000,
        pattern=WEBHOOK_URL,
        description="Where to POST: an http:// or https:// URL with a host name.",
        examples=["https://registry.example/hooks/lapsewatch"],
    )


class WebhookOut(_Model):
    id: int
    url: str
    active: bool
    created_at: datetime

    @classmethod
    def from_info(cls, info: WebhookInfo) -> WebhookOut:
        return cls(id=info.id, url=info.url, active=info.active, created_at=info.created_at)


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="Shown only now. Each delivery carries `X-Lapsewatch-Signature: "
        "sha256=<hex>`, the HMAC-SHA256 with this secret over "
        "`<X-Lapsewatch-Timestamp>.` followed by the raw body."
    )

    @classmethod
    def from_new(cls, hook: NewWebhook) -> WebhookCreated:
        return cls(
            id=hook.id,
            url=hook.url,
            active=hook.active,
            created_at=hook.created_at,
            secret=hook.secret,
        )
