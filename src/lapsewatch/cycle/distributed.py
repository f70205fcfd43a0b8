"""The cycle in chunks, so several workers on several machines share it.

``check --distributed`` enqueues the due domains in chunks (Celery tasks, see
:mod:`lapsewatch.jobs`). A worker claims the domains of its chunk with a lease (a
conditional UPDATE, so two workers never check the same domain at once), checks them
and applies the verdicts as a cycle in one process does (batches per transaction,
which also release the leases). Applying is idempotent, so a chunk done twice (a
worker killed mid-chunk) changes nothing twice.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, or_, update

from lapsewatch.config import Settings
from lapsewatch.cycle.due import select_due
from lapsewatch.cycle.run import check_and_apply
from lapsewatch.pace import shared_pace
from lapsewatch.store.db import make_sessionmaker
from lapsewatch.store.models import Domain

__all__ = ["check_claimed", "claim", "claim_chunk"]


def claim(
    engine: Engine, names: list[str], *, now: datetime, lease: timedelta, everything: bool
) -> list[str]:
    """Lease the names that are still due and not held by another worker."""
    if not names:
        return []
    statement = (
        update(Domain)
        .where(Domain.name.in_(names), or_(Domain.lease_until.is_(None), Domain.lease_until < now))
        .values(lease_until=now + lease)
        .returning(Domain.name)
    )
    if not everything:
        statement = statement.where(or_(Domain.next_due_at.is_(None), Domain.next_due_at <= now))
    with engine.begin() as connection:
        return sorted(connection.execute(statement).scalars())


def claim_chunk(
    settings: Settings, engine: Engine, names: list[str], everything: bool
) -> tuple[list[str], list[str]]:
    """``(claimed, busy)``: the names this worker now holds, and those due but held by
    another worker (which may be dead: to be sent again after its lease)."""
    now = datetime.now(UTC)
    lease = timedelta(seconds=settings.lease_seconds)
    claimed = claim(engine, names, now=now, lease=lease, everything=everything)
    with make_sessionmaker(engine)() as session:
        held = select_due(
            session, now=now, limit=None, everything=everything, names=names, include_leased=True
        )
    return claimed, [d.name for d in held if d.name not in claimed]


def check_claimed(settings: Settings, engine: Engine, names: list[str]) -> tuple[int, int]:
    """Check and apply the claimed ``names``: ``(checked, unverified)``."""
    return asyncio.run(_check_claimed(settings, engine, names))


async def _check_claimed(settings: Settings, engine: Engine, names: list[str]) -> tuple[int, int]:
    if not names:
        return 0, 0
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        # everything=True: we hold the lease, so due-ness was settled by the claim.
        due = select_due(
            session,
            now=datetime.now(UTC),
            limit=None,
            everything=True,
            names=names,
            include_leased=True,
        )
    # The same writer as a cycle in one process: batches per transaction, on its own thread.
    # Workers share each server's limit through Redis (LAPSEWATCH_PACE_REDIS=auto).
    summary = await check_and_apply(shared_pace(settings), engine, due)
    return summary.checked, summary.unverified
