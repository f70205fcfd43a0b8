"""The same cycle as Celery tasks, so several workers on several machines share it.

``check --distributed`` enqueues the due domains in chunks. A worker claims the
domains of its chunk with a lease (a conditional UPDATE, so two workers never
check the same domain at once), checks them and applies each verdict in its own
transaction, which also releases the lease. Tasks are acknowledged late: a worker
killed mid-task leaves its message unacknowledged, Redis hands it to another
worker after the visibility timeout, and by then the dead worker's leases have
expired. Applying is idempotent, so a chunk done twice changes nothing twice.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Engine, or_, update

from lapsewatch.config import Settings
from lapsewatch.cycle.due import select_due, stream_due
from lapsewatch.cycle.run import check_and_apply
from lapsewatch.store.db import make_engine, make_sessionmaker
from lapsewatch.store.models import Domain

__all__ = ["Queued", "celery_app", "check_domains", "configure", "enqueue_due"]

celery_app = Celery("lapsewatch")


def configure(settings: Settings) -> Celery:
    """Point the app at the broker; called by the CLI before enqueueing or working."""
    celery_app.conf.update(
        broker_url=settings.broker_url,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for a dead worker's tasks often enough to matter: kombu's default
            # (every 10th call of a 10 s timer) can leave them waiting 100 s or more.
            "unacked_restore_interval": max(1, int(min(60.0, settings.visibility_timeout / 4))),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return celery_app


configure(Settings())  # defaults until the CLI configures from the environment

_engines: dict[tuple[int, str], Engine] = {}


def _engine(url: str) -> Engine:
    """One engine per process: prefork children must not share their parent's connections."""
    key = (os.getpid(), url)
    if key not in _engines:
        _engines[key] = make_engine(url)
    return _engines[key]


@dataclass(frozen=True)
class Queued:
    domains: int
    tasks: int


def enqueue_due(
    settings: Settings, engine: Engine, *, limit: int | None, everything: bool = False
) -> Queued:
    configure(settings)
    size = settings.chunk_size
    domains = tasks = 0
    chunk: list[str] = []
    # Streamed: a registry of tens of millions of domains is never in memory at once.
    for due in stream_due(engine, now=datetime.now(UTC), limit=limit, everything=everything):
        chunk.append(due.name)
        if len(chunk) == size:
            check_domains.delay(chunk, everything)
            domains, tasks, chunk = domains + len(chunk), tasks + 1, []
    if chunk:
        check_domains.delay(chunk, everything)
        domains, tasks = domains + len(chunk), tasks + 1
    return Queued(domains, tasks)


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


@celery_app.task(  # type: ignore[untyped-decorator]
    name="lapsewatch.check_domains", acks_late=True, reject_on_worker_lost=True
)
def check_domains(names: list[str], everything: bool = False) -> dict[str, Any]:
    """Claim, check and apply one chunk; what another worker holds is sent again later."""
    settings = Settings.from_env()
    engine = _engine(settings.database_url)
    now = datetime.now(UTC)
    lease = timedelta(seconds=settings.lease_seconds)
    claimed = claim(engine, names, now=now, lease=lease, everything=everything)
    with make_sessionmaker(engine)() as session:
        held = select_due(
            session, now=now, limit=None, everything=everything, names=names, include_leased=True
        )
        # Due but not ours: held by a worker that may be dead; try again after its lease.
        busy = [d.name for d in held if d.name not in claimed]
    if busy:
        check_domains.apply_async((busy, everything), countdown=settings.lease_seconds)
    checked, unverified = asyncio.run(_check_claimed(settings, engine, claimed))
    return {"claimed": len(claimed), "checked": checked, "unverified": unverified}


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
    summary = await check_and_apply(settings, engine, due)
    return summary.checked, summary.unverified
