"""Issue #16: the periodic jobs under Celery beat.

The tasks are registered under the names the schedule uses, the schedule has its
entries (and Celery's own scheduler reads them), ``lapsewatch beat`` starts beat
with them, and each task does its job when a worker runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.app.task import Context
from celery.beat import Scheduler
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from lapsewatch import jobs as tasks
from lapsewatch import notices
from lapsewatch.cli import app as cli
from lapsewatch.config import ConfigError, Settings
from lapsewatch.jobs import beat_schedule, celery_app, configure
from lapsewatch.mail import outbox
from lapsewatch.store import Account, Email, Notice, make_sessionmaker
from tests.services import REDIS_URL

JOBS = {
    "lapsewatch-check": "lapsewatch.enqueue_due",
    "lapsewatch-notify": "lapsewatch.notify",
    "lapsewatch-mail": "lapsewatch.send_mail",
    "lapsewatch-webhooks": "lapsewatch.deliver_webhooks",
}


def test_tasks_are_registered() -> None:
    for name in [*JOBS.values(), "lapsewatch.check_domains"]:
        assert name in celery_app.tasks, name


def test_schedule_has_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHECK", "NOTIFY", "MAIL", "WEBHOOKS"):
        monkeypatch.delenv(f"LAPSEWATCH_BEAT_{name}_EVERY", raising=False)
    app = configure(Settings())
    schedule = app.conf.beat_schedule
    assert {name: entry["task"] for name, entry in schedule.items()} == JOBS
    assert schedule["lapsewatch-check"]["schedule"] == timedelta(hours=1)
    assert schedule["lapsewatch-check"]["kwargs"] == {"limit": 10_000}
    assert schedule["lapsewatch-notify"]["schedule"] == timedelta(minutes=15)
    assert schedule["lapsewatch-mail"]["schedule"] == timedelta(minutes=1)
    assert schedule["lapsewatch-webhooks"]["schedule"] == timedelta(minutes=1)
    for entry in schedule.values():
        assert entry["options"]["expires"] == entry["schedule"].total_seconds()


def test_schedule_follows_the_environment() -> None:
    schedule = beat_schedule(
        {
            "LAPSEWATCH_BEAT_CHECK_EVERY": "600",
            "LAPSEWATCH_BEAT_CHECK_LIMIT": "500",
            "LAPSEWATCH_BEAT_NOTIFY_EVERY": "120",
            "LAPSEWATCH_BEAT_MAIL_EVERY": "20",
            "LAPSEWATCH_BEAT_WEBHOOKS_EVERY": "30",
        }
    )
    assert schedule["lapsewatch-mail"]["schedule"] == timedelta(seconds=20)
    assert schedule["lapsewatch-check"]["schedule"] == timedelta(minutes=10)
    assert schedule["lapsewatch-check"]["kwargs"] == {"limit": 500}
    assert schedule["lapsewatch-notify"]["schedule"] == timedelta(minutes=2)
    assert schedule["lapsewatch-webhooks"]["schedule"] == timedelta(seconds=30)
    for bad in ({"LAPSEWATCH_BEAT_CHECK_EVERY": "soon"}, {"LAPSEWATCH_BEAT_NOTIFY_EVERY": "0"}):
        with pytest.raises(ConfigError):
            beat_schedule(bad)


def test_celery_scheduler_reads_the_schedule(tmp_path: Path) -> None:
    configure(Settings())
    scheduler = Scheduler(app=celery_app, lazy=False)
    for name, task in JOBS.items():
        entry = scheduler.schedule[name]
        assert entry.task == task
        assert entry.task in celery_app.tasks
    assert scheduler.schedule["lapsewatch-check"].kwargs == {"limit": 10_000}


def test_lapsewatch_beat_starts_celery_beat(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(celery_app, "start", lambda argv: started.append(argv))
    state = tmp_path / "beat-state"
    result = CliRunner().invoke(cli, ["beat", "--schedule-file", str(state)])
    assert result.exit_code == 0, result.output
    assert started == [["beat", "--loglevel=INFO", f"--schedule={state}"]]


def test_lapsewatch_beat_refuses_a_bad_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(celery_app, "start", lambda argv: pytest.fail("beat must not start"))
    result = CliRunner().invoke(cli, ["beat"], env={"LAPSEWATCH_BEAT_CHECK_EVERY": "never"})
    assert result.exit_code == 2
    assert "LAPSEWATCH_BEAT_CHECK_EVERY" in result.output


def test_each_task_does_its_job(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as a worker would (in this process): nothing due, nothing queued, nothing to
    deliver, and every job says so."""
    monkeypatch.setenv("LAPSEWATCH_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("LAPSEWATCH_SMTP_URL", "smtp://127.0.0.1:1")
    sent: list[Any] = []
    monkeypatch.setattr(tasks.check_domains, "delay", lambda *args: sent.append(args))
    assert tasks.enqueue_due_task.apply(kwargs={"limit": 10}).get() == {"domains": 0, "tasks": 0}
    assert sent == []
    notified = tasks.notify_task.apply().get()
    assert notified["sent"] == 0
    assert notified["stopped"] is False
    delivered = tasks.deliver_webhooks_task.apply().get()
    assert delivered == {"queued": 0, "delivered": 0, "failed": 0, "gave_up": 0}
    mailed = tasks.send_mail_task.apply().get()
    assert mailed == {"sent": 0, "failed": 0, "waiting": 0, "dropped": 0}


def test_send_mail_retries_while_the_server_is_down_and_keeps_the_mail(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, closed_port: Callable[[], int]
) -> None:
    """A reset link queued while the mail server is down: the task retries with backoff
    (here at once, run eagerly), gives up for now, and the link waits in the outbox."""
    monkeypatch.setenv("LAPSEWATCH_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("LAPSEWATCH_SMTP_URL", f"smtp://127.0.0.1:{closed_port()}")
    with make_sessionmaker(engine).begin() as session:
        account = Account(username="alice", created_at=datetime.now(UTC), projects=[])
        account.emails.append(
            Email(address="alice@gmail.com", domain="gmail.com", primary=True, verified=True)
        )
        session.add(account)
        session.flush()
        notices.queue(
            session,
            account_id=account.id,
            kind=notices.PASSWORD_RESET,
            now=datetime.now(UTC),
            email_id=account.emails[0].id,
        )
    tries: list[int] = []
    real = outbox.send_pending

    def counted(*args: Any, **kwargs: Any) -> outbox.OutboxSummary:
        summary = real(*args, **kwargs)
        tries.append(summary.failed)
        return summary

    monkeypatch.setattr("lapsewatch.mail.jobs.send_pending", counted)  # where it is called
    assert tasks.send_mail_task.retry_backoff
    # A retry does not inherit beat's expiry (it would be thrown away once that passed).
    beat_request = Context(id="beat-run", args=(), kwargs={}, expires="2026-12-01T00:01:00+00:00")
    retry = tasks.send_mail_task.signature_from_request(
        beat_request, countdown=600, **tasks.send_mail_task.retry_kwargs
    )
    assert retry.options["expires"] is None
    result = tasks.send_mail_task.apply()
    assert isinstance(result.result, tasks.MailServerDown)
    assert result.state == "FAILURE"
    assert tries == [1] * (1 + tasks.send_mail_task.max_retries)
    with make_sessionmaker(engine)() as session:
        (notice,) = session.scalars(select(Notice)).all()
        assert notice.sent_at is None
        assert notice.lease_until is None


def test_configure_is_what_celery_reads() -> None:
    """Settings given to ``configure`` win over the environment's when Celery first reads
    its configuration (a fresh process: the app here is configured already)."""
    code = (
        "from lapsewatch.jobs import celery_app, configure\n"
        "from lapsewatch.config import Settings\n"
        "configure(Settings(broker_url='memory://given', visibility_timeout=5))\n"
        "options = celery_app.conf.broker_transport_options\n"
        "print(celery_app.conf.broker_url, options['visibility_timeout'])\n"
    )
    env = {**os.environ, "LAPSEWATCH_BROKER_URL": "redis://127.0.0.1:6379/9"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["memory://given", "5"]


@pytest.mark.redis
def test_a_dead_workers_sweep_lock_lasts_seconds_not_minutes(require_redis: None) -> None:
    """kombu's Redis channel reads the sweep settings: a worker killed while it holds the
    sweep's lock holds up the redelivery of dead workers' tasks for 5 s here (1 s sweeps,
    visibility 6 s), not kombu's 300 s (the Celery crash test once waited it out)."""
    code = (
        "from lapsewatch.jobs import celery_app, configure\n"
        "from lapsewatch.config import Settings\n"
        f"configure(Settings(broker_url={REDIS_URL!r}, visibility_timeout=6))\n"
        "with celery_app.connection_for_write() as connection:\n"
        "    channel = connection.default_channel\n"
        "    print(channel.unacked_mutex_expire, channel.unacked_restore_interval,\n"
        "          channel.unacked_restore_throttle, channel.visibility_timeout)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["5", "1", "1", "6"]
