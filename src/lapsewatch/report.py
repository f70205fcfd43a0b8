"""The admin's overview: where the addresses stand and which accounts are exposed.

Pure queries into frozen dataclasses; the formats print them. Every figure is
an aggregate computed by the database (``GROUP BY``, ``count``), so the report
costs a few index scans however many million addresses there are, and nothing
here loops over rows in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, func, select

from lapsewatch.cycle.due import count_due_query, scheduled, without_row
from lapsewatch.mail.advice import accounts_at_risk
from lapsewatch.store.models import Account, Domain, Email

__all__ = [
    "NEVER_CHECKED",
    "AddressCounts",
    "AtRisk",
    "Report",
    "UpcomingCheck",
    "build_report",
]

NEVER_CHECKED = "never_checked"
"""The key for domains without a verdict yet in ``domains_by_verdict``."""


@dataclass(frozen=True, slots=True)
class AddressCounts:
    """Every address falls in exactly one of the four states; they add up to ``total``."""

    total: int
    verified: int
    unverified_by_lapsewatch: int
    """Unverified because their domain got a dangerous verdict (``unverify_reason`` set)."""
    never_verified: int
    """Not verified and no known verification date."""
    unverified_other: int
    """Not verified, verified once, not by lapsewatch's doing (e.g. the registry's)."""
    free_provider: int
    """Of ``total``, those at well-known free providers (never checked)."""
    free_provider_verified: int


@dataclass(frozen=True, slots=True)
class UpcomingCheck:
    domain: str
    next_due_at: datetime | None
    """``None``: never checked, due now."""
    last_verdict: str | None


@dataclass(frozen=True, slots=True)
class AtRisk:
    """An account one lapsed domain away from takeover: its only way back in is that address."""

    username: str
    address: str
    domain: str


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: datetime
    addresses: AddressCounts
    unverified_by_reason: tuple[tuple[str, int], ...]
    """(verdict, addresses), most frequent first."""
    domains_total: int
    domains_by_verdict: tuple[tuple[str, int], ...]
    """(verdict or ``never_checked``, domains), most frequent first."""
    domains_due: int
    """Domains that ``lapsewatch check`` would check now (``cycle.due``'s rule)."""
    next_due: tuple[UpcomingCheck, ...]
    accounts_at_risk: tuple[AtRisk, ...]
    """The first ``at_risk_limit`` by username."""
    accounts_at_risk_total: int


def build_report(
    bind: Engine | Connection,
    *,
    now: datetime | None = None,
    next_due_limit: int = 10,
    at_risk_limit: int = 50,
) -> Report:
    """Compute the report in one read transaction (a consistent snapshot)."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return build_report(
                conn, now=now, next_due_limit=next_due_limit, at_risk_limit=at_risk_limit
            )
    now = now or datetime.now(UTC)
    with bind.begin():
        domains_total, by_verdict = _domains_by_verdict(bind)
        # cycle.due's own count: "due now" here is what `lapsewatch check` checks.
        with_row, without_a_row = bind.execute(count_due_query(now)).one()
        at_risk, at_risk_total = _accounts_at_risk(bind, at_risk_limit)
        return Report(
            generated_at=now,
            addresses=_address_counts(bind),
            unverified_by_reason=_unverified_by_reason(bind),
            domains_total=domains_total,
            domains_by_verdict=by_verdict,
            domains_due=int(with_row) + int(without_a_row),
            next_due=_next_due(bind, now, next_due_limit, rowless=without_a_row > 0),
            accounts_at_risk=at_risk,
            accounts_at_risk_total=at_risk_total,
        )


def _address_counts(conn: Connection) -> AddressCounts:
    by_lapsewatch = Email.unverify_reason.is_not(None).label("by_lapsewatch")
    undated = Email.verified_at.is_(None).label("undated")
    query = select(Email.verified, by_lapsewatch, undated, Email.free_provider, func.count())
    query = query.group_by(Email.verified, by_lapsewatch, undated, Email.free_provider)
    counts = dict.fromkeys(
        ("total", "verified", "lapsewatch", "never", "other", "free", "free_verified"), 0
    )
    for verified, lapsewatch, no_date, free, count in conn.execute(query):
        counts["total"] += count
        if verified:
            state = "verified"
        elif lapsewatch:
            state = "lapsewatch"
        else:
            state = "never" if no_date else "other"
        counts[state] += count
        if free:
            counts["free"] += count
            counts["free_verified"] += count if verified else 0
    return AddressCounts(
        total=counts["total"],
        verified=counts["verified"],
        unverified_by_lapsewatch=counts["lapsewatch"],
        never_verified=counts["never"],
        unverified_other=counts["other"],
        free_provider=counts["free"],
        free_provider_verified=counts["free_verified"],
    )


def _unverified_by_reason(conn: Connection) -> tuple[tuple[str, int], ...]:
    count = func.count().label("n")
    query = (
        select(Email.unverify_reason, count)
        .where(Email.verified.is_(False), Email.unverify_reason.is_not(None))
        .group_by(Email.unverify_reason)
        .order_by(count.desc(), Email.unverify_reason)
    )
    return tuple((str(reason), int(n)) for reason, n in conn.execute(query))


def _domains_by_verdict(conn: Connection) -> tuple[int, tuple[tuple[str, int], ...]]:
    count = func.count().label("n")
    query = select(Domain.last_verdict, count).group_by(Domain.last_verdict)
    rows = [(verdict or NEVER_CHECKED, int(n)) for verdict, n in conn.execute(query)]
    rows.sort(key=lambda row: (-row[1], row[0]))
    return sum(n for _, n in rows), tuple(rows)


def _next_due(
    conn: Connection, now: datetime, limit: int, *, rowless: bool
) -> tuple[UpcomingCheck, ...]:
    """In ``check``'s scope (``cycle.due``): never-checked domains first (due now,
    and those without a row among them when ``rowless``), by name; then by due date.

    Separate ``LIMIT`` queries instead of ``NULLS FIRST`` or a union so that each
    can walk an index on both SQLite and PostgreSQL; rowless domains are only
    looked for when counted, since finding none means reading every address.
    """
    columns = (Domain.name, Domain.next_due_at, Domain.last_verdict)
    scope = scheduled(now)
    never = conn.execute(
        select(*columns)
        .where(Domain.next_due_at.is_(None), scope)
        .order_by(Domain.name)
        .limit(limit)
    )
    found = [UpcomingCheck(name, due, verdict) for name, due, verdict in never]
    if rowless:
        names = conn.scalars(without_row().order_by(Email.domain).limit(limit))
        found += (UpcomingCheck(name, None, None) for name in names)
        found = sorted(found, key=lambda due: due.domain)[:limit]
    if len(found) < limit:
        later = conn.execute(
            select(*columns)
            .where(Domain.next_due_at.is_not(None), scope)
            .order_by(Domain.next_due_at, Domain.name)
            .limit(limit - len(found))
        )
        found += (UpcomingCheck(name, due, verdict) for name, due, verdict in later)
    return tuple(found)


def _accounts_at_risk(conn: Connection, limit: int) -> tuple[tuple[AtRisk, ...], int]:
    """``mail.advice``'s rule: no 2FA and a single verified address, on a custom domain."""
    at_risk = accounts_at_risk()
    total = conn.execute(select(func.count()).select_from(at_risk.subquery())).scalar_one()
    rows = conn.execute(at_risk.order_by(Account.username).limit(limit))
    return tuple(AtRisk(*row) for row in rows), int(total)
