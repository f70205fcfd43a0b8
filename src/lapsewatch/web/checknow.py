"""An admin's "check this domain now": the cycle's own checker and ``apply_result``,
counted in the metrics like a cycle's check.

Exactly what a scheduled check does (same sources, same verdict, same
transaction that records evidence, unverifies and queues notices), for one
domain, on demand; recorded as an event naming the admin who asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from lapsewatch import metrics
from lapsewatch.cycle.apply import apply_result
from lapsewatch.cycle.domaincheck import DomainChecker
from lapsewatch.cycle.due import known_due, select_due
from lapsewatch.schedule import Policy
from lapsewatch.store.db import make_sessionmaker
from lapsewatch.store.events import record
from lapsewatch.store.models import Domain, Email
from lapsewatch.web.queries import storable

__all__ = ["CheckedNow", "UnknownDomain", "check_now"]


class UnknownDomain(LookupError):
    """Neither a domain row nor an address has that domain."""


@dataclass(frozen=True)
class CheckedNow:
    domain: str
    verdict: str
    reason: str
    unverified: int


def check_now(
    engine: Engine,
    name: str,
    *,
    checker: DomainChecker,
    policy: Policy,
    now: datetime,
    actor: str,
) -> CheckedNow:
    """Check ``name`` at once and apply the verdict; raises :class:`UnknownDomain`.

    The checker may raise (a source misconfigured): nothing is applied then.
    """
    if not storable(name):
        raise UnknownDomain(name)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        due = select_due(
            session, now=now, limit=None, everything=True, names=[name], include_leased=True
        )
        row = session.get(Domain, name)
        known = (
            row is not None
            or session.scalar(select(Email.id).where(Email.domain == name).limit(1)) is not None
        )
        # No verified address behind it: still worth a look, with no date to compare.
        target = due[0] if due else known_due(name, None, row)
    if not known:
        raise UnknownDomain(name)
    result = checker.check(target, now=now)
    with sessions.begin() as session:
        unverified = apply_result(session, result, policy=policy)
        record(
            session,
            at=now,
            actor=actor,
            kind="domain.checked_on_demand",
            domain=name,
            after={"verdict": result.decision.verdict.value, "unverified": unverified},
            reason=result.decision.reason,
        )
    metrics.count_result(result, unverified)
    return CheckedNow(name, result.decision.verdict.value, result.decision.reason, unverified)
