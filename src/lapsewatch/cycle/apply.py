"""Apply one domain's verdict in one transaction: evidence, schedule, unverify,
events, notices. Idempotent: applying the same result twice changes nothing more.

A crash at any point leaves either all of a domain's changes or none of them, so
a restarted cycle simply checks the domains that are still due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from lapsewatch.dates import isoformat
from lapsewatch.schedule import Policy, next_check
from lapsewatch.sources.interface import Observation
from lapsewatch.store.models import Domain, Email, Event, Notice, ObservationRow
from lapsewatch.verdict import Decision, Verdict

__all__ = ["CheckResult", "apply_result", "would_unverify"]

ACTOR = "cycle"


@dataclass(frozen=True)
class CheckResult:
    """What the checker learned about one domain, ready to be applied."""

    domain: str
    earliest_verified_at: datetime | None
    observations: tuple[Observation, ...]
    decision: Decision
    checked_at: datetime


def _affected(email: Email, result: CheckResult) -> bool:
    """Whether this verified address falls to the verdict."""
    decision = result.decision
    if decision.verdict is Verdict.REREGISTERED:
        # Only addresses verified before the new registration; an unknown
        # verification time is doubt, and doubt never unverifies.
        return (
            decision.registered_at is not None
            and email.verified_at is not None
            and email.verified_at < decision.registered_at
        )
    return decision.verdict.dangerous


def _insert_event(session: Session, values: dict[str, object]) -> int | None:
    """Insert unless an event with the same key exists; the new id, or None."""
    statement: PgInsert | SqliteInsert
    if session.get_bind().dialect.name == "postgresql":
        statement = pg_insert(Event).values(**values).on_conflict_do_nothing(index_elements=["key"])
    else:
        statement = (
            sqlite_insert(Event).values(**values).on_conflict_do_nothing(index_elements=["key"])
        )
    return session.execute(statement.returning(Event.id)).scalar_one_or_none()


def _notice_text(email: Email, decision: Decision) -> tuple[str, str]:
    subject = f"Your address {email.address} was unverified"
    body = (
        f"The address {email.address} on your account was marked unverified because its "
        f"domain {decision.domain} is {decision.verdict.value.replace('_', ' ')}: "
        f"{decision.reason}\n\n"
        "Password resets are never sent to an unverified address. If you still own the "
        "domain, renew it and verify the address again from your account page. Consider "
        "enabling two-factor authentication and adding a second verified address at a "
        "well-known mail provider."
    )
    return subject, body


def apply_result(session: Session, result: CheckResult, *, policy: Policy) -> int:
    """Apply inside the caller's transaction; return how many addresses were unverified."""
    decision, now = result.decision, result.checked_at
    domain = session.get(Domain, result.domain, with_for_update=True)
    if domain is None:
        domain = Domain(name=result.domain, consecutive_failures=0)
        session.add(domain)
    session.add_all(
        ObservationRow(
            domain=result.domain,
            source=o.source,
            outcome=o.outcome.value,
            detail=o.detail,
            found=o.found,
            status=list(o.status),
            registered_at=o.registered_at,
            expires_at=o.expires_at,
            evidence=o.evidence,
            observed_at=o.observed_at,
        )
        for o in result.observations
    )
    failed = decision.verdict is Verdict.UNKNOWN
    previous = domain.last_verdict
    if previous != decision.verdict.value and (
        decision.verdict.dangerous or (previous is not None and Verdict(previous).dangerous)
    ):
        session.add(
            Event(
                at=now,
                actor=ACTOR,
                kind="domain.verdict_changed",
                domain=result.domain,
                before={"verdict": previous},
                after={"verdict": decision.verdict.value, "decided_by": decision.decided_by},
                reason=decision.reason,
            )
        )
    domain.consecutive_failures = (domain.consecutive_failures or 0) + 1 if failed else 0
    domain.last_checked_at = now
    domain.last_verdict = decision.verdict.value
    domain.last_reason = decision.reason
    rdap = next((o for o in result.observations if o.source == "rdap" and o.answered), None)
    if rdap is not None:  # only the registry's record moves the known dates
        domain.registered_at = decision.registered_at or domain.registered_at
        domain.expires_at = decision.expires_at
    domain.next_due_at = next_check(
        policy,
        now=now,
        verdict=decision.verdict,
        expires_at=domain.expires_at,
        failures=domain.consecutive_failures,
    )
    domain.lease_until = None
    if not decision.verdict.dangerous:
        return 0
    return _unverify(session, result)


def _unverify(session: Session, result: CheckResult) -> int:
    decision, now = result.decision, result.checked_at
    candidates = session.scalars(
        select(Email)
        .where(Email.domain == result.domain, Email.verified.is_(True))
        .order_by(Email.id)
    ).all()
    unverified: list[tuple[Email, int | None]] = []
    for email in candidates:
        if not _affected(email, result):
            continue
        changed = session.execute(  # type: ignore[attr-defined]  # rowcount: CursorResult
            update(Email)
            .where(Email.id == email.id, Email.verified.is_(True))
            .values(
                verified=False,
                unverified_at=now,
                unverify_reason=decision.verdict.value,
                unverify_detail=decision.reason,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed != 1:
            continue  # another worker got there first
        event_id = _insert_event(
            session,
            {
                "at": now,
                "actor": ACTOR,
                "kind": "email.unverified",
                "account_id": email.account_id,
                "email_id": email.id,
                "domain": result.domain,
                "before": {"verified": True, "verified_at": isoformat(email.verified_at)},
                "after": {
                    "verified": False,
                    "verdict": decision.verdict.value,
                    "decided_by": decision.decided_by,
                    "registered_at": isoformat(decision.registered_at),
                    "expires_at": isoformat(decision.expires_at),
                },
                "reason": decision.reason,
                "key": f"email.unverified:{email.id}:{isoformat(email.verified_at)}",
            },
        )
        unverified.append((email, event_id))
    for email, event_id in unverified:
        if event_id is not None:
            _queue_notices(session, email, decision, event_id, now)
    return len(unverified)


def _queue_notices(
    session: Session, email: Email, decision: Decision, event_id: int, now: datetime
) -> None:
    """Tell the owner; the mailer sends it to whatever addresses are verified then."""
    subject, body = _notice_text(email, decision)
    session.add(
        Notice(
            account_id=email.account_id,
            to_address=None,
            kind="email.unverified",
            subject=subject,
            body=body,
            created_at=now,
            event_id=event_id,
        )
    )


def would_unverify(session: Session, result: CheckResult) -> int:
    """What :func:`apply_result` would unverify (for ``--dry-run``), reading only."""
    if not result.decision.verdict.dangerous:
        return 0
    emails = session.scalars(
        select(Email).where(Email.domain == result.domain, Email.verified.is_(True))
    ).all()
    return sum(_affected(email, result) for email in emails)
