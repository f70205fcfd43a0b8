"""Logging set-up: ``LAPSEWATCH_LOG_FORMAT=json`` writes one JSON object per line.

Each line has ``ts`` (UTC, ISO 8601), ``level``, ``logger`` and ``msg``, then
whichever of these apply: ``domain``, ``verdict``, ``source``, ``server``,
``request_id`` (web requests: the ``X-Request-Id`` a proxy sent, or a new one,
echoed in the answer), ``task_id`` (Celery tasks), ``exc`` (a traceback), and
any other ``extra={...}`` field a log call passes. Fields come from the call's
``extra``, from :func:`log_context` (a context variable, so every line logged
while checking a domain carries it), and from lapsewatch's convention of
starting a message with the domain (``"%s: ..." % domain``).

``LAPSEWATCH_LOG_LEVEL`` (``INFO`` by default once a format is chosen) sets the
level. Without either variable nothing is configured: the commands print what
they always printed.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestId",
    "configure_logging",
    "json_logs",
    "log_context",
]

REQUEST_ID_HEADER = "X-Request-Id"
FIELDS = ("domain", "verdict", "source", "server", "request_id", "task_id")
"""Context fields, in the order they are written."""

_CONTEXT: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "lapsewatch_log_context", default=None
)
_HANDLER_NAME = "lapsewatch"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_DOMAIN_FIRST = re.compile(r"^%s: ")
_LOOKS_LIKE_DOMAIN = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+$", re.IGNORECASE)

# Attributes every LogRecord has; anything else came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every line logged inside carries ``fields`` (``domain=…``, ``verdict=…``)."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _task_id() -> str | None:
    if "celery" not in sys.modules:
        return None
    try:
        from celery import current_task

        task_id = current_task.request.id if current_task else None
    except Exception:
        return None
    return str(task_id) if task_id else None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields: dict[str, Any] = dict(_CONTEXT.get() or {})
        domain = _leading_domain(record)
        if domain is not None:
            fields.setdefault("domain", domain)
        task_id = _task_id()
        if task_id is not None:
            fields.setdefault("task_id", task_id)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                fields[key] = value
        for key in FIELDS:
            if fields.get(key) is not None:
                entry[key] = fields.pop(key)
        for key, value in fields.items():
            if value is not None and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _leading_domain(record: logging.LogRecord) -> str | None:
    """The domain of a message written ``"%s: …" % domain`` (lapsewatch's convention)."""
    if not isinstance(record.msg, str) or not _DOMAIN_FIRST.match(record.msg):
        return None
    args = record.args
    if not isinstance(args, tuple) or not args or not isinstance(args[0], str):
        return None
    return args[0] if _LOOKS_LIKE_DOMAIN.match(args[0]) else None


def json_logs(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return (env.get("LAPSEWATCH_LOG_FORMAT") or "").strip().lower() == "json"


def configure_logging(environ: Mapping[str, str] | None = None) -> None:
    """Set up the root logger from ``LAPSEWATCH_LOG_FORMAT`` (``text`` or ``json``) and
    ``LAPSEWATCH_LOG_LEVEL``; nothing when neither is set. Safe to call again."""
    env = os.environ if environ is None else environ
    fmt = (env.get("LAPSEWATCH_LOG_FORMAT") or "").strip().lower()
    level_name = (env.get("LAPSEWATCH_LOG_LEVEL") or "").strip().upper()
    if not fmt and not level_name:
        return
    if fmt not in ("", "text", "json"):
        raise ValueError(f"LAPSEWATCH_LOG_FORMAT must be 'text' or 'json', not {fmt!r}")
    level = logging.getLevelName(level_name or "INFO")
    if not isinstance(level, int):
        raise ValueError(f"LAPSEWATCH_LOG_LEVEL is not a log level: {level_name!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


class RequestId:
    """ASGI middleware: a request id per request, in the log context and the answer.

    A proxy's ``X-Request-Id`` is kept when it is a plain token (at most 64 of
    ``A-Z a-z 0-9 . _ : -``); otherwise a new one is made.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = given if _SAFE_ID.fullmatch(given) else secrets.token_hex(8)

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, with_id)
