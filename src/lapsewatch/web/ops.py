"""What an operator's tooling asks: ``/healthz`` (alive), ``/readyz`` (can serve) and
``/metrics`` (Prometheus text format).

* ``/healthz`` answers 200 while the process serves requests and reaches its
  database (every page reads the store, so without it nothing works), 503 when
  the database does not answer within ``ready_timeout``. An orchestrator that
  *restarts* a process on a failed liveness probe should set
  ``LAPSEWATCH_HEALTHZ_DATABASE=false``: restarting every web process during a
  database outage mends nothing (``/readyz`` still says the truth).
* ``/readyz`` answers 200 only when the database answers and its schema is the
  newest this code knows (migrated), and, for each Redis configured, when it
  answers a ``PING``: the Celery broker (``LAPSEWATCH_BROKER_URL``, check
  ``redis``) and the pacer's shared rate limits (an explicit
  ``LAPSEWATCH_PACE_REDIS`` URL, check ``pace_redis``; not ``auto`` or ``off``);
  otherwise 503 with the failing check named. Every check runs under a deadline,
  so a database that went silent is a 503, not a hung probe.
* ``/metrics`` is :func:`lapsewatch.metrics.render`: the counted metrics (of every
  process, with ``LAPSEWATCH_METRICS_DIR``) and the gauges read from the store
  (:mod:`lapsewatch.web.store_gauges`).
  With ``LAPSEWATCH_METRICS_TOKEN`` set it needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine, text

from lapsewatch import metrics
from lapsewatch.web.context import get_context
from lapsewatch.web.store_gauges import StoreCollector

__all__ = ["OPS_STATE", "OpsSettings", "get_ops", "router"]

log = logging.getLogger(__name__)

OPS_STATE = "ops"
"""Where ``create_app`` keeps the :class:`OpsSettings` (``app.state.ops``)."""


@dataclass(frozen=True)
class OpsSettings:
    redis_url: str | None = None
    """Checked by ``/readyz`` when set (``LAPSEWATCH_BROKER_URL`` given explicitly)."""
    pace_redis_url: str | None = None
    """Checked by ``/readyz`` when set (``LAPSEWATCH_PACE_REDIS`` given as a URL): the
    Redis the pacer shares each server's limit through (also this process's live checks)."""
    ready_timeout: float = 5.0
    """Seconds ``/readyz`` waits for each check (``LAPSEWATCH_READY_TIMEOUT``)."""
    metrics_token: str | None = None
    """``/metrics`` needs ``Authorization: Bearer <token>`` (``LAPSEWATCH_METRICS_TOKEN``)."""
    healthz_database: bool = True
    """``/healthz`` also checks that the database answers (``LAPSEWATCH_HEALTHZ_DATABASE``)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OpsSettings:
        env = os.environ if environ is None else environ
        broker = env.get("LAPSEWATCH_BROKER_URL") or None
        redis_url = broker if broker and broker.startswith(("redis://", "rediss://")) else None
        # As the pacer reads it (lapsewatch.pace.open_pacer): anything but auto/off is a URL.
        pace = (env.get("LAPSEWATCH_PACE_REDIS") or "").strip()
        pace_redis_url = pace if pace.lower() not in ("", "auto", "off") else None
        try:
            timeout = float(env.get("LAPSEWATCH_READY_TIMEOUT") or 5.0)
        except ValueError:
            timeout = 5.0
        deep = (env.get("LAPSEWATCH_HEALTHZ_DATABASE") or "true").strip().lower()
        return cls(
            redis_url=redis_url,
            pace_redis_url=pace_redis_url,
            ready_timeout=max(0.1, timeout),
            metrics_token=env.get("LAPSEWATCH_METRICS_TOKEN") or None,
            healthz_database=deep not in ("0", "false", "no", "off"),
        )


def get_ops(request: Request) -> OpsSettings:
    ops = getattr(request.app.state, OPS_STATE, None)
    return ops if isinstance(ops, OpsSettings) else OpsSettings()


router = APIRouter(include_in_schema=False)

_NO_STORE = {"Cache-Control": "no-store"}


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    ops = get_ops(request)
    if ops.healthz_database:
        database = await _within(ops.ready_timeout, reach_database, get_context(request).engine)
        if database != "ok":
            return JSONResponse(
                {"status": "down", "database": database}, status_code=503, headers=_NO_STORE
            )
    return JSONResponse({"status": "ok"}, headers=_NO_STORE)


def reach_database(engine: Engine) -> str | None:
    """``None`` when the database answers at all (not whether it is migrated)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


@lru_cache(maxsize=1)
def _head() -> str | None:
    from lapsewatch.store.schema import head_revision

    return head_revision()


def check_database(engine: Engine) -> str | None:
    """``None`` when the database answers and is migrated, else what is wrong."""
    from lapsewatch.store.schema import current_revision

    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current = current_revision(engine)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    head = _head()
    if current != head:
        schema = current or "empty"
        return f"not migrated: schema {schema}, this version needs {head} (lapsewatch init)"
    return None


def check_redis(url: str, timeout: float) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
    return None


async def _within(timeout: float, check: Callable[..., str | None], *args: Any) -> str:
    try:
        async with asyncio.timeout(timeout):
            problem = await anyio.to_thread.run_sync(check, *args, abandon_on_cancel=True)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    return problem or "ok"


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    context = get_context(request)
    ops = get_ops(request)
    checks = {"database": await _within(ops.ready_timeout, check_database, context.engine)}
    for name, url in (("redis", ops.redis_url), ("pace_redis", ops.pace_redis_url)):
        if url:
            checks[name] = await _within(ops.ready_timeout, check_redis, url, ops.ready_timeout)
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        log.warning("not ready: %s", checks)
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
        headers=_NO_STORE,
    )


@router.get("/metrics")
async def metrics_page(request: Request) -> Response:
    ops = get_ops(request)
    if ops.metrics_token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), ops.metrics_token.encode()
        ):
            return JSONResponse(
                {"detail": "a metrics token is required: Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    context = get_context(request)
    body = await anyio.to_thread.run_sync(
        lambda: metrics.render(StoreCollector(context.engine, context.clock))
    )
    return Response(body, media_type=metrics.CONTENT_TYPE, headers=_NO_STORE)
