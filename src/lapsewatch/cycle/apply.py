"""Apply a domain's verdict inside a transaction: evidence, schedule, unverify,
events, notices. Idempotent: applying the same result twice changes nothing more.

:func:`apply_result` applies one result; :func:`apply_results` applies a batch
with one statement per kind of row (the cycle's writer commits a batch per
transaction). A crash at any point leaves either all of a transaction's changes
or none of them, so a restarted cycle simply checks the domains still due.

Evidence: every observation is stored with the raw answer it came from, except
that for a domain found healthy (``registered``) only the first
:data:`HEALTHY_EVIDENCE_LIMIT` characters are kept. What a healthy answer says
is in the row's own columns (status tokens, dates, the one-line detail); the
raw text matters when a domain is judged dangerous or cannot be judged, and
then it is kept whole (up to the sources' own cap). Storing every registry's
full JSON for every healthy domain of every cycle would make evidence most of
the database's size and of its write traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from lapsewatch import messages
from lapsewatch.confirm import Pending, settle
from lapsewatch.dates import isoformat
from lapsewatch.mail_hosts import registered_again_acted_on
from lapsewatch.names import address_key
from lapsewatch.schedule import Policy, next_check
from lapsewatch.sources.interface import Observation, Outcome
from lapsewatch.store.db import dialect_insert, in_values
from lapsewatch.store.events import record_once
from lapsewatch.store.models import (
    AddressHistory,
    Domain,
    Email,
    Event,
    Notice,
    ObservationRow,
    Token,
)
from lapsewatch.verdict import (
    REGISTRY_SOURCES,
    Decision,
    Verdict,
    healthy_mail_hosts,
    healthy_nameservers,
    in_auto_renew_grace,
    read_mail_hosts,
)

__all__ = [
    "CONFIRMATION_PENDING",
    "CONFIRMATION_RESOLVED",
    "HEALTHY_EVIDENCE_LIMIT",
    "CheckResult",
    "apply_result",
    "apply_results",
    "reregistered_since",
    "settle_results",
    "stored_evidence",
    "unverify_email",
    "would_unverify",
]

ACTOR = "cycle"
CONFIRMATION_PENDING = "domain.confirmation_pending"
"""Event: a dangerous verdict on thin evidence waits for its confirming check."""
CONFIRMATION_RESOLVED = "domain.confirmation_resolved"
"""Event: the open confirmation was confirmed, contradicted or superseded."""
HEALTHY_EVIDENCE_LIMIT = 1024
"""Characters of raw evidence kept per observation of a domain judged ``registered``."""


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
    return _falls(email.trusted_since, result.decision)


def _falls(trusted_since: datetime | None, decision: Decision) -> bool:
    # A mail-host domain registered again takes the addresses verified before it (also
    # beside the domain's own danger, when firm). A thin mail-host danger never takes an
    # address a firm one spares: it is confirmed on its own.
    dangerous = [m.decision for m in decision.mail_hosts if m.decision.verdict.dangerous]
    firm = [d for d in dangerous if d.firm]
    by_host = (firm or dangerous) if decision.verdict is Verdict.MAIL_HOST_LAPSED else firm
    if any(_falls(trusted_since, d) for d in by_host):
        return True
    if decision.verdict is Verdict.REREGISTERED:
        # Only addresses verified before the new registration; an unknown
        # verification time is doubt, and doubt never unverifies.
        return (
            decision.registered_at is not None
            and trusted_since is not None
            and trusted_since < decision.registered_at
        )
    if decision.verdict is Verdict.MAIL_HOST_LAPSED:
        return not by_host  # no mail host to tell by: the verdict stands
    return decision.verdict.dangerous


def stored_evidence(observation: Observation, verdict: Verdict) -> str:
    """The evidence kept for an observation (see the module's docstring)."""
    text = observation.evidence
    if verdict is not Verdict.REGISTERED or len(text) <= HEALTHY_EVIDENCE_LIMIT:
        return text
    left = len(text) - HEALTHY_EVIDENCE_LIMIT
    return f"{text[:HEALTHY_EVIDENCE_LIMIT]}\n[... {left} more characters not kept: healthy]"


def _observation_values(result: CheckResult) -> list[dict[str, Any]]:
    verdict = result.decision.verdict
    return [
        {
            "domain": result.domain,
            "source": o.source,
            "outcome": o.outcome.value,
            "detail": o.detail,
            "found": o.found,
            "status": list(o.status),
            "registered_at": o.registered_at,
            "expires_at": o.expires_at,
            "evidence": stored_evidence(o, verdict),
            "observed_at": o.observed_at,
        }
        for o in result.observations
    ]


@dataclass(frozen=True)
class _Known:
    """What the ``domains`` row said before this result."""

    consecutive_failures: int
    last_verdict: str | None
    registered_at: datetime | None
    expires_at: datetime | None
    dangerous_at: datetime | None = None
    dangerous_verdict: str | None = None
    nameservers: list[str] | None = None
    mail_hosts: list[str] | None = None
    mail_hosts_read_at: datetime | None = None


def reregistered_since(known: datetime | None, observed: datetime | None) -> bool:
    """Whether the registry's registration date is newer than the one the store had
    seen: the domain was registered again, by whoever, since we last looked."""
    return known is not None and observed is not None and observed > known


def _next_state(
    known: _Known, result: CheckResult, policy: Policy
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The domain row's new values, and the ``domain.verdict_changed`` event (or None)."""
    decision, now = result.decision, result.checked_at
    failures = known.consecutive_failures + 1 if decision.verdict is Verdict.UNKNOWN else 0
    if decision.pending is not None:  # waiting for a confirming check is not a failure
        failures = known.consecutive_failures
    registered_at, expires_at = known.registered_at, known.expires_at
    observations = result.observations
    if any(o.source in REGISTRY_SOURCES and o.outcome is Outcome.ANSWERED for o in observations):
        # Only the registry's record moves the known dates.
        registered_at = decision.registered_at or registered_at
        expires_at = decision.expires_at
    moved = reregistered_since(known.registered_at, registered_at)
    values: dict[str, Any] = {
        "consecutive_failures": failures,
        "last_checked_at": now,
        "last_verdict": decision.verdict.value,
        "last_reason": decision.reason,
        "registered_at": registered_at,
        "expires_at": expires_at,
        "next_due_at": next_check(
            policy,
            now=now,
            verdict=decision.verdict,
            expires_at=expires_at,
            failures=failures,
            confirm_at=decision.confirm_at,
            in_grace=in_auto_renew_grace(result.observations),
        ),
        "lease_until": None,
        # Once dangerous, or registered again since the date seen before (whatever
        # the verdict, as the stored date moves on), the domain may have changed
        # hands: remembered for good (a plain verification link no longer works).
        "dangerous_at": now if decision.verdict.dangerous or moved else known.dangerous_at,
        "dangerous_verdict": (
            decision.verdict.value
            if decision.verdict.dangerous
            else Verdict.REREGISTERED.value
            if moved
            else known.dangerous_verdict
        ),
        "nameservers": _known_nameservers(known, result),
        **_known_mail_hosts(known, result),
    }
    previous = known.last_verdict
    event: dict[str, Any] | None = None
    if previous != decision.verdict.value and (
        decision.verdict.dangerous or (previous is not None and Verdict(previous).dangerous)
    ):
        event = {
            "at": now,
            "actor": ACTOR,
            "kind": "domain.verdict_changed",
            "account_id": None,
            "email_id": None,
            "domain": result.domain,
            "before": {"verdict": previous},
            "after": {"verdict": decision.verdict.value, "decided_by": decision.decided_by},
            "reason": decision.reason,
            "key": None,
        }
    return values, event


def _open_confirmations(session: Session, names: Sequence[str]) -> dict[str, Pending]:
    """The open pending confirmation of each domain: its latest confirmation event,
    when that is a pending one."""
    latest: dict[str, tuple[str, dict[str, Any] | None, datetime]] = {}
    rows = session.execute(
        select(Event.domain, Event.kind, Event.after, Event.at)
        .where(
            Event.domain.in_(in_values(names)),
            Event.kind.in_([CONFIRMATION_PENDING, CONFIRMATION_RESOLVED]),
        )
        .order_by(Event.at, Event.id)
    )
    for name, kind, after, at in rows:
        if name is not None:
            latest[name] = (kind, after, at)
    found: dict[str, Pending] = {}
    for name, (kind, after, at) in latest.items():
        verdict = (after or {}).get("verdict")
        if kind == CONFIRMATION_PENDING and verdict in DANGEROUS_VALUES:
            found[name] = Pending(Verdict(verdict), at)
    return found


DANGEROUS_VALUES = frozenset(v.value for v in Verdict if v.dangerous)


def settle_results(
    session: Session, results: Sequence[CheckResult], *, policy: Policy, record: bool = True
) -> list[CheckResult]:
    """The results with the confirmation rule applied (:func:`lapsewatch.confirm.settle`),
    recording pending and resolved confirmations as events (unless ``record`` is false,
    for ``--dry-run``). Results already settled pass through unchanged.

    Only domains that may hold an open confirmation are looked up: those with a
    dangerous verdict on thin evidence now, and those left ``unknown`` last time.
    """
    todo = [r for r in results if not r.decision.settled]
    if not todo:
        return list(results)
    thin = {r.domain for r in todo if r.decision.verdict.dangerous and r.decision.doubt}
    rest = sorted({r.domain for r in todo} - thin)
    unknown = (
        set(
            session.scalars(
                select(Domain.name).where(
                    Domain.name.in_(in_values(rest)), Domain.last_verdict == "unknown"
                )
            )
        )
        if rest
        else set()
    )
    asked = sorted(thin | unknown)
    pending = _open_confirmations(session, asked) if asked else {}
    settled: list[CheckResult] = []
    events: list[dict[str, Any]] = []
    for result in results:
        if result.decision.settled:
            settled.append(result)
            continue
        before = pending.get(result.domain)
        outcome = settle(
            result.decision, before, now=result.checked_at, confirm_after=policy.confirm
        )
        decision = outcome.decision
        settled.append(replace(result, decision=decision))
        if outcome.record is not None:
            events.append(_confirmation_event(result, decision, before, outcome.record))
    if events and record:
        session.execute(insert(_EVENTS), events)
    return settled


def _confirmation_event(
    result: CheckResult, decision: Decision, before: Pending | None, record: str
) -> dict[str, Any]:
    opened = record == "pending"
    return {
        "at": result.checked_at,
        "actor": ACTOR,
        "kind": CONFIRMATION_PENDING if opened else CONFIRMATION_RESOLVED,
        "account_id": None,
        "email_id": None,
        "domain": result.domain,
        "before": (
            {"verdict": before.verdict.value, "since": isoformat(before.since)} if before else None
        ),
        "after": (
            {
                "verdict": decision.pending.value if decision.pending else None,
                "confirm_at": isoformat(decision.confirm_at),
                "doubt": result.decision.doubt,
            }
            if opened
            else {"outcome": record, "verdict": decision.verdict.value}
        ),
        "reason": decision.reason,
        "key": None,
    }


def _known_nameservers(known: _Known, result: CheckResult) -> list[str] | None:
    healthy = healthy_nameservers(result.decision, result.observations)
    return list(healthy) if healthy is not None else known.nameservers


def _known_mail_hosts(known: _Known, result: CheckResult) -> dict[str, Any]:
    """The mail hosts to keep, and when they were read: this check's when it read them
    at a healthy check outside the grace (``healthy_mail_hosts``), else those known;
    read again unchanged (in the grace too), they count as read now, so the checks of
    a grace (whose name servers did not change) do not read it again.

    Unchanged hosts keep their old read time while a mail-host domain is unknown or
    dangerous: ``mail_hosts.registered_since_read`` tells a re-registration from it,
    which a failed check or a pending confirmation must not lose."""
    acted = registered_again_acted_on(result.decision)
    if acted is not None:  # those verified before fall now; later checks compare with it
        since = max(acted, known.mail_hosts_read_at or acted)
        return {"mail_hosts": known.mail_hosts, "mail_hosts_read_at": since}
    healthy = healthy_mail_hosts(result.decision, result.observations)
    read = read_mail_hosts(result.observations) if healthy is None else healthy
    unchanged = read is not None and known.mail_hosts is not None
    unchanged = unchanged and set(read or ()) == set(known.mail_hosts or ())
    unsettled = any(
        m.decision.verdict is Verdict.UNKNOWN or m.decision.verdict.dangerous
        for m in result.decision.mail_hosts
    )
    if healthy is not None and not (unchanged and unsettled):
        return {"mail_hosts": list(healthy), "mail_hosts_read_at": result.checked_at}
    read_at = known.mail_hosts_read_at
    if unchanged and not unsettled:
        read_at = result.checked_at
    return {"mail_hosts": known.mail_hosts, "mail_hosts_read_at": read_at}


def apply_result(session: Session, result: CheckResult, *, policy: Policy) -> int:
    """Apply inside the caller's transaction; return how many addresses were unverified.

    The confirmation rule is applied first (:func:`settle_results`), so a dangerous
    verdict on thin evidence unverifies nobody until a later check confirms it.
    """
    result = settle_results(session, [result], policy=policy)[0]
    domain = session.get(Domain, result.domain, with_for_update=True)
    if domain is None:
        domain = Domain(name=result.domain, consecutive_failures=0)
        session.add(domain)
    session.add_all(ObservationRow(**values) for values in _observation_values(result))
    known = _Known(
        domain.consecutive_failures or 0,
        domain.last_verdict,
        domain.registered_at,
        domain.expires_at,
        domain.dangerous_at,
        domain.dangerous_verdict,
        domain.nameservers,
        domain.mail_hosts,
        domain.mail_hosts_read_at,
    )
    values, event = _next_state(known, result, policy)
    if event is not None:
        session.add(Event(**event))
    for key, value in values.items():
        setattr(domain, key, value)
    if not result.decision.verdict.dangerous:
        return 0
    return _unverify(session, result)


_DOMAINS = cast(Table, Domain.__table__)
_OBSERVATIONS = cast(Table, ObservationRow.__table__)
_EVENTS = cast(Table, Event.__table__)


def apply_results(session: Session, results: Sequence[CheckResult], *, policy: Policy) -> list[int]:
    """Apply a batch inside the caller's transaction, as :func:`apply_result` would one
    by one; return how many addresses each result unverified.

    The domain rows are read (and, on PostgreSQL, locked, in name order) in one
    query, and observations, domain updates and events written with one
    statement each; only a dangerous verdict takes the per-address path. The
    confirmation rule is applied first (:func:`settle_results`).
    """
    if len({r.domain for r in results}) != len(results):  # the same domain twice: in order
        return [apply_result(session, result, policy=policy) for result in results]
    results = settle_results(session, results, policy=policy)
    columns = _DOMAINS.c
    rows = session.execute(
        select(
            columns.name,
            columns.consecutive_failures,
            columns.last_verdict,
            columns.registered_at,
            columns.expires_at,
            columns.dangerous_at,
            columns.dangerous_verdict,
            columns.nameservers,
            columns.mail_hosts,
            columns.mail_hosts_read_at,
        )
        .where(columns.name.in_(in_values(sorted(r.domain for r in results))))
        .order_by(columns.name)
        .with_for_update()
    ).all()
    known = {row[0]: _Known(row[1] or 0, *tuple(row[2:])) for row in rows}
    new: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    observations: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for result in results:
        before = known.get(result.domain)
        values, event = _next_state(before or _Known(0, None, None, None), result, policy)
        if before is None:
            new.append({"name": result.domain, **values})
        else:
            changed.append({"b_name": result.domain, **{f"b_{k}": v for k, v in values.items()}})
        observations.extend(_observation_values(result))
        if event is not None:
            events.append(event)
    if new:
        session.execute(insert(_DOMAINS), new)
    if changed:
        session.execute(_update_domain(changed[0]), changed)
    if observations:
        session.execute(insert(_OBSERVATIONS), observations)
    if events:
        session.execute(insert(_EVENTS), events)
    return [
        _unverify(session, result) if result.decision.verdict.dangerous else 0 for result in results
    ]


def _update_domain(example: dict[str, Any]) -> Any:
    keys = [k.removeprefix("b_") for k in example if k != "b_name"]
    return (
        update(_DOMAINS)
        .where(_DOMAINS.c.name == bindparam("b_name"))
        .values({key: bindparam(f"b_{key}") for key in keys})
    )


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
        if not unverify_email(session, email, decision.verdict, decision.reason, now):
            continue  # another worker got there first
        event_id = record_once(
            session,
            key=f"email.unverified:{email.id}:{isoformat(email.verified_at)}",
            at=now,
            actor=ACTOR,
            kind="email.unverified",
            account_id=email.account_id,
            email_id=email.id,
            domain=result.domain,
            before={"verified": True, "verified_at": isoformat(email.verified_at)},
            after={
                "verified": False,
                "verdict": decision.verdict.value,
                "decided_by": decision.decided_by,
                "registered_at": isoformat(decision.registered_at),
                "expires_at": isoformat(decision.expires_at),
            },
            reason=decision.reason,
        )
        unverified.append((email, event_id))
    for email, event_id in unverified:
        if event_id is not None:
            _queue_notices(session, email, decision, event_id, now)
    return len(unverified)


def unverify_email(
    session: Session, email: Email, verdict: Verdict, detail: str, now: datetime
) -> bool:
    """Unverify a verified address for ``verdict``; false if it was not verified
    (another worker got there first). One conditional UPDATE, so it happens once.

    The unverify is also kept beyond the address row (``address_history``), so
    removing and re-adding the address (or importing a case variant) cannot wash
    it clean, and the open links sent to it die: a reset or verification link sent
    before now may sit in a mailbox that is no longer the owner's.
    """
    changed = session.execute(  # type: ignore[attr-defined]  # rowcount: CursorResult
        update(Email)
        .where(Email.id == email.id, Email.verified.is_(True))
        .values(
            verified=False,
            unverified_at=now,
            unverify_reason=verdict.value,
            unverify_detail=detail,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        return False
    values = {
        "address_key": address_key(email.address),
        "domain": email.domain,
        "unverified_at": now,
        "unverify_reason": verdict.value,
    }
    changes = {"unverified_at": now, "unverify_reason": verdict.value}
    statement = dialect_insert(session.get_bind().dialect.name, AddressHistory).values(**values)
    statement = statement.on_conflict_do_update(index_elements=["address_key"], set_=changes)
    session.execute(statement)
    session.execute(
        update(Token)
        .where(Token.email_id == email.id, Token.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return True


def _queue_notices(
    session: Session, email: Email, decision: Decision, event_id: int, now: datetime
) -> None:
    """Tell the owner; the mailer sends it to whatever addresses are verified then."""
    subject, body = messages.unverified_notice(
        email.address, decision.domain, decision.verdict.value, decision.reason
    )
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
    """What :func:`apply_result` would unverify (for ``--dry-run``), reading only;
    pass a result settled with ``settle_results(..., record=False)``."""
    if not result.decision.verdict.dangerous or not result.decision.firm:
        return 0
    emails = session.scalars(
        select(Email).where(Email.domain == result.domain, Email.verified.is_(True))
    ).all()
    return sum(_affected(email, result) for email in emails)
