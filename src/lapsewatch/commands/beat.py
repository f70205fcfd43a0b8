"""``lapsewatch beat``: Celery beat, which starts the periodic jobs on the workers —
enqueue the due domains, send the mail, deliver the webhooks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lapsewatch.commands._common import fail, load_settings
from lapsewatch.config import ConfigError

__all__ = ["beat"]


def beat(
    schedule_file: Annotated[
        Path,
        typer.Option(
            help="Where beat keeps the time each job last ran (survives restarts).",
        ),
    ] = Path("lapsewatch-beat-schedule"),
    loglevel: Annotated[str, typer.Option(help="Celery's log level.")] = "INFO",
) -> None:
    """Run Celery beat until stopped; run exactly one per deployment.

    Every LAPSEWATCH_BEAT_CHECK_EVERY seconds (3600) it queues up to
    LAPSEWATCH_BEAT_CHECK_LIMIT due domains (10,000) for the workers, like
    `lapsewatch check --distributed`; every LAPSEWATCH_BEAT_NOTIFY_EVERY (900) it
    runs `lapsewatch notify`; every LAPSEWATCH_BEAT_MAIL_EVERY (60) it sends the
    outbox; every LAPSEWATCH_BEAT_WEBHOOKS_EVERY (60) it delivers
    webhooks. The jobs run on `lapsewatch worker` processes (broker:
    LAPSEWATCH_BROKER_URL).
    """
    from lapsewatch.jobs import beat_schedule, configure

    settings = load_settings()
    try:
        beat_schedule()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    app = configure(settings)
    app.start(["beat", f"--loglevel={loglevel}", f"--schedule={schedule_file}"])
