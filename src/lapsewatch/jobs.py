"""Every background job, one way: Celery tasks on ``lapsewatch worker`` processes,
queued by ``lapsewatch beat`` (or the CLI), over the work the store already holds.

* ``lapsewatch.check_domains``: one chunk of due domains
  (:mod:`lapsewatch.cycle.distributed`); ``lapsewatch.enqueue_due``
  queues them (``check --distributed``).
* ``lapsewatch.notify``: expiry warnings, advice and the outbox (``lapsewatch notify``).
* ``lapsewatch.send_mail``: the outbox alone, often (links and security mails a web
  process could not send), retried with backoff while the mail server is down.
* ``lapsewatch.deliver_webhooks``: the webhook deliveries due
  (``lapsewatch admin deliver-webhooks``).

Tasks are acknowledged late: a worker killed mid-task leaves its message
unacknowledged, Redis hands it to another worker after the visibility timeout, and
each job is safe to run twice (domains and notices are claimed with a lease,
deliveries by a conditional update; no lock is held across network I/O). A
deployment without Redis runs the same functions from the CLI.

The app reads its configuration when Celery first needs it (``celery -A
lapsewatch.jobs worker|beat`` works as is); the CLI's :func:`configure` sets it from
the settings it has checked. This module sits above ``cycle``, ``mail`` and ``web``,
whose work it runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery import Celery
from sqlalchemy import Engine

from lapsewatch import metrics
from lapsewatch.config import ConfigError, Settings
from lapsewatch.cycle.distributed import check_claimed, claim_chunk
from lapsewatch.cycle.due import stream_due
from lapsewatch.store.db import make_engine

if TYPE_CHECKING:
    from lapsewatch.mail.links import Links
    from lapsewatch.smtp import Mailer

__all__ = [
    "BEAT_DEFAULTS",
    "Queued",
    "beat_schedule",
    "celery_app",
    "check_domains",
    "configure",
    "deliver_webhooks_task",
    "enqueue_due",
    "enqueue_due_task",
    "notify_task",
    "send_mail_task",
]


_given: Settings | None = None
"""The settings :func:`configure` was called with, if it was."""


class _App(Celery):  # type: ignore[misc]
    def on_configure(self) -> None:
        """When Celery first reads its configuration: the settings :func:`configure`
        was given, else the environment's (a worker or beat started by ``celery -A
        lapsewatch.jobs``); never at import."""
        _configure(self, _given or _settings_or_defaults())


celery_app = _App("lapsewatch")


def configure(settings: Settings) -> Celery:
    """Point the app at the broker; called by the CLI before enqueueing or working."""
    global _given
    _given = settings
    return _configure(celery_app, settings)


def _configure(app: Celery, settings: Settings) -> Celery:
    # Sweep for a dead worker's tasks often enough to matter: kombu's default (every 10th
    # call of a 10 s timer) can leave them waiting 100 s or more.
    restore_every = max(1, int(min(60.0, settings.visibility_timeout / 4)))
    app.conf.update(
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
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            # One worker at a time sweeps, under a Redis lock. A worker killed while it
            # holds the lock (SIGKILL, OOM) stops every sweep until the lock expires:
            # kombu's 300 s, whatever the sweep's interval. Five sweeps' time instead.
            "unacked_mutex_expire": 5 * restore_every,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule=_schedule_or_defaults(),
        timezone="UTC",
    )
    return app


def _settings_or_defaults() -> Settings:
    """The environment's settings, or the defaults when a variable is bad (the CLI then
    reports it); so that ``celery -A lapsewatch.jobs beat`` works as is."""
    try:
        return Settings.from_env()
    except ConfigError:
        return Settings()


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
    metrics.distributed_enqueued(domains)
    return Queued(domains, tasks)


@celery_app.task(  # type: ignore[untyped-decorator]
    name="lapsewatch.check_domains", acks_late=True, reject_on_worker_lost=True
)
def check_domains(names: list[str], everything: bool = False) -> dict[str, Any]:
    """Claim, check and apply one chunk; what another worker holds is sent again later."""
    settings = Settings.from_env()
    engine = _engine(settings.database_url)
    claimed, busy = claim_chunk(settings, engine, names, everything)
    if busy:  # held by a worker that may be dead: try again after its lease
        check_domains.apply_async((busy, everything), countdown=settings.lease_seconds)
    with metrics.worker_chunk():
        checked, unverified = check_claimed(settings, engine, claimed)
    return {"claimed": len(claimed), "checked": checked, "unverified": unverified}


# ------------------------------------------------------------------ periodic jobs (beat)

BEAT_DEFAULTS = {"CHECK": 3600.0, "NOTIFY": 900.0, "MAIL": 60.0, "WEBHOOKS": 60.0}
"""Seconds between runs of each periodic job (``LAPSEWATCH_BEAT_<JOB>_EVERY``)."""


def _every(job: str, environ: Mapping[str, str]) -> float:
    name = f"LAPSEWATCH_BEAT_{job}_EVERY"
    text = environ.get(name)
    if not text:
        return BEAT_DEFAULTS[job]
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {text!r}") from None
    if not value >= 1:
        raise ConfigError(f"{name} must be at least 1 second")
    return value


def beat_schedule(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Celery beat's schedule: enqueue the due domains, queue and send the notices, send
    the outbox often, deliver webhooks.

    Each entry expires after its own interval, so a beat that ran while no worker was
    there does not leave a pile of identical jobs behind. Overlapping runs are safe:
    domains and notices are claimed with a lease, deliveries by a conditional update.
    """
    env = os.environ if environ is None else environ
    check = _every("CHECK", env)
    limit = env.get("LAPSEWATCH_BEAT_CHECK_LIMIT") or ""
    try:
        check_limit = int(limit) if limit else 10_000
    except ValueError:
        raise ConfigError(f"LAPSEWATCH_BEAT_CHECK_LIMIT must be a number, not {limit!r}") from None
    notify = _every("NOTIFY", env)
    mail = _every("MAIL", env)
    webhooks = _every("WEBHOOKS", env)
    return {
        "lapsewatch-check": {
            "task": "lapsewatch.enqueue_due",
            "schedule": timedelta(seconds=check),
            "kwargs": {"limit": check_limit},
            "options": {"expires": check},
        },
        "lapsewatch-notify": {
            "task": "lapsewatch.notify",
            "schedule": timedelta(seconds=notify),
            "options": {"expires": notify},
        },
        "lapsewatch-mail": {
            "task": "lapsewatch.send_mail",
            "schedule": timedelta(seconds=mail),
            "options": {"expires": mail},
        },
        "lapsewatch-webhooks": {
            "task": "lapsewatch.deliver_webhooks",
            "schedule": timedelta(seconds=webhooks),
            "options": {"expires": webhooks},
        },
    }


def _schedule_or_defaults() -> dict[str, dict[str, Any]]:
    """The schedule; the defaults when a variable is bad (``lapsewatch beat`` reports it)."""
    try:
        return beat_schedule()
    except ConfigError:
        return beat_schedule({})


@celery_app.task(name="lapsewatch.enqueue_due")  # type: ignore[untyped-decorator]
def enqueue_due_task(limit: int | None = 10_000) -> dict[str, int]:
    """``lapsewatch check --distributed --limit N``, from beat: queue the due domains."""
    settings = Settings.from_env()
    queued = enqueue_due(settings, _engine(settings.database_url), limit=limit)
    return {"domains": queued.domains, "tasks": queued.tasks}


def _mail_wiring() -> tuple[Engine, Mailer, Links]:
    """The store, the SMTP mailer and the links' settings, from the environment."""
    from lapsewatch.accounts.settings import AccountSettings
    from lapsewatch.mail.links import Links
    from lapsewatch.smtp import SmtpMailer

    account = AccountSettings.from_env()
    engine = _engine(Settings.from_env().database_url)
    return engine, SmtpMailer.from_settings(account), Links.from_settings(account)


@celery_app.task(name="lapsewatch.notify")  # type: ignore[untyped-decorator]
def notify_task() -> dict[str, Any]:
    """``lapsewatch notify``, from beat: queue warnings and advice, send the outbox."""
    from lapsewatch.mail.jobs import run_mail_jobs

    return run_mail_jobs(*_mail_wiring()).counts()


class MailServerDown(Exception):
    """The outbox stopped: the mail server could not be reached (the task retries)."""


@celery_app.task(  # type: ignore[untyped-decorator]
    name="lapsewatch.send_mail",
    autoretry_for=(MailServerDown,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=6,
    # A retry keeps its request's options, beat's expiry among them, which would throw
    # away every retry later than the beat interval.
    retry_kwargs={"expires": None},
)
def send_mail_task() -> dict[str, int]:
    """The outbox: every queued mail (the web's links and security mails, notices)."""
    from lapsewatch.mail.jobs import send_outbox

    summary = send_outbox(*_mail_wiring())
    if summary.stopped:
        raise MailServerDown("; ".join(summary.errors) or "the mail server is unreachable")
    return {
        "sent": summary.sent,
        "failed": summary.failed,
        "waiting": summary.waiting,
        "dropped": summary.dropped,
    }


@celery_app.task(name="lapsewatch.deliver_webhooks")  # type: ignore[untyped-decorator]
def deliver_webhooks_task() -> dict[str, int]:
    """``lapsewatch admin deliver-webhooks``, from beat."""
    from lapsewatch.web.config import WebSettings
    from lapsewatch.web.webhooks import deliver_webhooks

    settings = Settings.from_env()
    allow = WebSettings.from_env().webhook_allow
    summary = deliver_webhooks(_engine(settings.database_url), allow=allow)
    return {
        "queued": summary.queued,
        "delivered": summary.delivered,
        "failed": summary.failed,
        "gave_up": summary.gave_up,
    }
