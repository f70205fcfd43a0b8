"""``lapsewatch worker``: a Celery worker that checks domains enqueued by
``lapsewatch check --distributed``."""

from __future__ import annotations

from typing import Annotated

import typer

from lapsewatch.commands._common import load_settings

__all__ = ["worker"]


def worker(
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Tasks at once in this worker. Each has its own rate limits: "
            "N tasks may send N x LAPSEWATCH_RATE_* requests a second.",
        ),
    ] = 1,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo or threads.")] = "prefork",
    hostname: Annotated[
        str | None, typer.Option(help="Worker name (unique per machine); default Celery's.")
    ] = None,
) -> None:
    """Run a worker until stopped (the broker is LAPSEWATCH_BROKER_URL)."""
    from lapsewatch.jobs import configure

    app = configure(load_settings())
    argv = ["worker", f"--concurrency={concurrency}", f"--pool={pool}", "--loglevel=INFO"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)
