"""Read-only queries behind the admin pages and the JSON API: one address, one
domain with its evidence, the unverified addresses, unverifications per day.

Frozen dataclasses out (no ORM objects), bounded by ``LIMIT`` everywhere, so a
page costs a few index lookups whatever the size of the registry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, func, select

from lapsewatch.accounts.results import AddressStatus
from lapsewatch.names import address_key
from lapsewatch.store.models import Account, Domain, Email, Event, ObservationRow

__all__ = [
    "AddressView",
    "DomainAddress",
    "DomainView",
    "ObservationView",
    "UnverifiedRow",
    "address_view",
    "domain_view",
    "latest_observations",
    "storable",
    "unverifications_per_day",
    "unverified_addresses",
]


@dataclass(frozen=True, slots=True)
class ObservationView:
    source: str
    outcome: str
    detail: str
    found: bool | None
    status: tuple[str, ...]
    registered_at: datetime | None
    expires_at: datetime | None
    observed_at: datetime
    evidence: str | None
    """The raw answer (e.g. the RDAP JSON); ``None`` unless asked for."""


@dataclass(frozen=True, slots=True)
class DomainAddress:
    address: str
    username: str
    verified: bool
    unverify_reason: str | None


@dataclass(frozen=True, slots=True)
class DomainView:
    name: str
    verdict: str | None
    reason: str | None
    last_checked_at: datetime | None
    next_due_at: datetime | None
    registered_at: datetime | None
    expires_at: datetime | None
    consecutive_failures: int
    observations: tuple[ObservationView, ...]
    """The latest observation of each source, by source name."""
    addresses: tuple[DomainAddress, ...]
    addresses_total: int


@dataclass(frozen=True, slots=True)
class AddressView:
    address: str
    username: str
    domain: str
    free_provider: bool
    primary: bool
    status: AddressStatus
    verified_at: datetime | None
    unverified_at: datetime | None
    unverify_reason: str | None
    reason: str | None
    domain_verdict: str | None
    domain_reason: str | None
    domain_checked_at: datetime | None


@dataclass(frozen=True, slots=True)
class UnverifiedRow:
    address: str
    username: str
    domain: str
    verdict: str
    reason: str | None
    verified_at: datetime | None
    unverified_at: datetime | None


def storable(text: str) -> bool:
    """Whether ``text`` can be compared with stored text at all: PostgreSQL refuses NUL
    and unencodable surrogates with an error, and no stored name contains them."""
    return not any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in text)


def _status(verified: bool, unverify_reason: str | None) -> AddressStatus:
    if verified:
        return AddressStatus.VERIFIED
    return AddressStatus.UNVERIFIED if unverify_reason else AddressStatus.NOT_VERIFIED


def address_view(conn: Connection, address: str, *, owner: str | None = None) -> AddressView | None:
    """One address (by its case-folded key), or ``None``; with ``owner``, only an
    address of an account that owner manages (an API key sees only its own)."""
    if not storable(address):
        return None
    query = (
        select(
            Email.address,
            Account.username,
            Email.domain,
            Email.free_provider,
            Email.primary,
            Email.verified,
            Email.verified_at,
            Email.unverified_at,
            Email.unverify_reason,
            Email.unverify_detail,
            Domain.last_verdict,
            Domain.last_reason,
            Domain.last_checked_at,
        )
        .join(Account, Account.id == Email.account_id)
        .outerjoin(Domain, Domain.name == Email.domain)
    )
    if owner is not None:
        query = query.where(Account.owner == owner)
    row = conn.execute(query.where(Email.address_key == address_key(address))).first()
    if row is None:
        return None
    return AddressView(
        address=row.address,
        username=row.username,
        domain=row.domain,
        free_provider=row.free_provider,
        primary=row.primary,
        status=_status(row.verified, row.unverify_reason),
        verified_at=row.verified_at,
        unverified_at=row.unverified_at,
        unverify_reason=row.unverify_reason,
        reason=row.unverify_detail,
        domain_verdict=row.last_verdict,
        domain_reason=row.last_reason,
        domain_checked_at=row.last_checked_at,
    )


def latest_observations(
    conn: Connection, names: Sequence[str], *, evidence: bool = False
) -> dict[str, tuple[ObservationView, ...]]:
    """Per domain, the newest observation of each source (the evidence of its verdict)."""
    if not names:
        return {}
    rank = (
        func.row_number()
        .over(
            partition_by=(ObservationRow.domain, ObservationRow.source),
            order_by=(ObservationRow.observed_at.desc(), ObservationRow.id.desc()),
        )
        .label("rank")
    )
    columns = [
        ObservationRow.domain,
        ObservationRow.source,
        ObservationRow.outcome,
        ObservationRow.detail,
        ObservationRow.found,
        ObservationRow.status,
        ObservationRow.registered_at,
        ObservationRow.expires_at,
        ObservationRow.observed_at,
    ]
    if evidence:
        columns.append(ObservationRow.evidence)
    ranked = select(*columns, rank).where(ObservationRow.domain.in_(sorted(set(names)))).subquery()
    rows = conn.execute(
        select(ranked).where(ranked.c.rank == 1).order_by(ranked.c.domain, ranked.c.source)
    )
    found: dict[str, list[ObservationView]] = {}
    for row in rows:
        found.setdefault(row.domain, []).append(
            ObservationView(
                source=row.source,
                outcome=row.outcome,
                detail=row.detail,
                found=row.found,
                status=tuple(row.status or ()),
                registered_at=row.registered_at,
                expires_at=row.expires_at,
                observed_at=row.observed_at,
                evidence=row.evidence if evidence else None,
            )
        )
    return {name: tuple(views) for name, views in found.items()}


def domain_view(
    conn: Connection, name: str, *, evidence: bool = False, address_limit: int = 100
) -> DomainView | None:
    """One domain with its latest evidence and the addresses on it, or ``None``."""
    if not storable(name):
        return None
    row = conn.execute(
        select(
            Domain.last_verdict,
            Domain.last_reason,
            Domain.last_checked_at,
            Domain.next_due_at,
            Domain.registered_at,
            Domain.expires_at,
            Domain.consecutive_failures,
        ).where(Domain.name == name)
    ).first()
    addresses_total = int(
        conn.execute(select(func.count()).where(Email.domain == name)).scalar_one()
    )
    if row is None and addresses_total == 0:
        return None
    addresses = tuple(
        DomainAddress(*row)
        for row in conn.execute(
            select(Email.address, Account.username, Email.verified, Email.unverify_reason)
            .join(Account, Account.id == Email.account_id)
            .where(Email.domain == name)
            .order_by(Email.address)
            .limit(address_limit)
        )
    )
    observations = latest_observations(conn, [name], evidence=evidence).get(name, ())
    return DomainView(
        name=name,
        verdict=row.last_verdict if row else None,
        reason=row.last_reason if row else None,
        last_checked_at=row.last_checked_at if row else None,
        next_due_at=row.next_due_at if row else None,
        registered_at=row.registered_at if row else None,
        expires_at=row.expires_at if row else None,
        consecutive_failures=(row.consecutive_failures or 0) if row else 0,
        observations=observations,
        addresses=addresses,
        addresses_total=addresses_total,
    )


def unverified_addresses(
    conn: Connection, *, limit: int = 50, offset: int = 0
) -> tuple[tuple[UnverifiedRow, ...], int]:
    """Addresses lapsewatch unverified, newest first, and how many there are in all."""
    where = (Email.verified.is_(False), Email.unverify_reason.is_not(None))
    total = int(conn.execute(select(func.count()).where(*where)).scalar_one())
    rows = conn.execute(
        select(
            Email.address,
            Account.username,
            Email.domain,
            Email.unverify_reason,
            Email.unverify_detail,
            Email.verified_at,
            Email.unverified_at,
        )
        .join(Account, Account.id == Email.account_id)
        .where(*where)
        .order_by(Email.unverified_at.desc(), Email.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return tuple(
        UnverifiedRow(
            address=row.address,
            username=row.username,
            domain=row.domain,
            verdict=row.unverify_reason or "",
            reason=row.unverify_detail,
            verified_at=row.verified_at,
            unverified_at=row.unverified_at,
        )
        for row in rows
    ), total


def unverifications_per_day(
    conn: Connection, *, now: datetime, days: int = 90
) -> tuple[tuple[date, int], ...]:
    """``email.unverified`` events per UTC day over the last ``days`` days, zeros included.

    Counted in Python from the timestamps alone: a date cast in SQL would use
    the database session's time zone on PostgreSQL.
    """
    first = (now - timedelta(days=days - 1)).date()
    since = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    counts = Counter(
        at.date()
        for at in conn.scalars(
            select(Event.at).where(Event.kind == "email.unverified", Event.at >= since)
        )
    )
    return tuple(
        (first + timedelta(days=offset), counts.get(first + timedelta(days=offset), 0))
        for offset in range(days)
    )
