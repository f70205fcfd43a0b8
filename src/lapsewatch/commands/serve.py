"""``lapsewatch serve``: the web app (account pages, admin dashboard, JSON API) under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.commands._common import errors, fail, load_settings
from lapsewatch.commands.accounts import database_error
from lapsewatch.config import ConfigError
from lapsewatch.logs import json_logs

__all__ = ["serve"]


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    webhooks_every: Annotated[
        float | None,
        typer.Option(hidden=True, help="Ignored (webhooks are delivered by the jobs)."),
    ] = None,
) -> None:
    """Run the web app: sign-up, login, 2FA, security page, admin dashboard, JSON API.

    Configured by LAPSEWATCH_DATABASE_URL, LAPSEWATCH_SECRET_KEY (signs session
    cookies; set it, or every restart signs everybody out), LAPSEWATCH_BASE_URL
    (the public address, used in mailed links), LAPSEWATCH_SMTP_URL,
    LAPSEWATCH_MAIL_FROM, LAPSEWATCH_MAX_PUSH_BYTES / LAPSEWATCH_MAX_BODY_BYTES (request
    body limits, 5 MiB for the API push and 64 KiB elsewhere) and
    LAPSEWATCH_WEBHOOK_ALLOW (CIDRs webhooks may reach although internal). Behind a
    reverse proxy, keep --host 127.0.0.1. Webhooks, notices and checks run as jobs
    (`lapsewatch beat` and `worker`, or the timers' `admin deliver-webhooks`, `notify`
    and `check`), not in the web server.
    """
    import uvicorn

    from lapsewatch.web.app import create_app_from_env

    load_settings()  # a bad variable is reported here, not as a traceback
    if webhooks_every is not None:  # a unit file written for an earlier release
        errors.print(
            "[yellow]warning:[/] --webhooks-every is ignored: webhooks are delivered by the "
            "lapsewatch.deliver_webhooks job (beat) or `lapsewatch admin deliver-webhooks`",
            highlight=False,
        )
    try:
        account_settings = AccountSettings.from_env()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if account_settings.secret_key_generated:
        errors.print(
            "[yellow]warning:[/] LAPSEWATCH_SECRET_KEY is not set; sessions end when the "
            "server stops",
            highlight=False,
        )
    try:
        app = create_app_from_env()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:
        raise fail(f"could not open the database: {database_error(exc)}") from None
    # JSON logs: uvicorn's loggers go through the root logger's JSON handler.
    from uvicorn.config import LOGGING_CONFIG

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        server_header=False,
        log_config=None if json_logs() else LOGGING_CONFIG,
    )
