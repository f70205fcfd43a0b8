"""A drop-in for Fastly's Domain Status API, answered from lapsewatch's verdicts.

``GET /domain-management/v1/tools/status?domain=NAME`` with ``Fastly-Key: <a
lapsewatch API key>`` answers in Fastly's shape::

    {"domain": "x.example", "zone": "example", "status": "undelegated inactive",
     "scope": "estimate", "tags": "", "lapsewatch": {"verdict": "available", ...}}

so a registry that already asks Fastly (PyPI's ``FastlyDomainStatusService``:
``response.json()["status"].split()``, unverifying on ``undelegated``,
``inactive``, ``expiring``, ``deleting`` or ``unknown``) can point its base URL
here and change nothing else. The mapping from verdicts to tokens is
:data:`TOKENS` (documented in ``docs/status-api.md``); a dangerous verdict this
table does not name yet gets :data:`DANGER_TOKENS`, which PyPI's list catches.

The answer comes from the store when the domain's last check is younger than
``LAPSEWATCH_STATUS_MAX_AGE_HOURS``; otherwise the domain is checked now, with
the cycle's own checker (rate-limited here by ``LAPSEWATCH_STATUS_LIVE_RATE``
checks a second, 429 above it), and the result is applied and stored exactly
as the cycle would (evidence, schedule, unverify, notices) and counted in the
same metrics (``lapsewatch_checks_total``, the source counters and latency,
``lapsewatch_unverified_total``), its log lines carrying ``domain`` and ``source``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from lapsewatch import domains, metrics
from lapsewatch.config import ConfigError
from lapsewatch.cycle.apply import apply_result, settle_results
from lapsewatch.cycle.due import known_due, select_due
from lapsewatch.dates import isoformat
from lapsewatch.logs import log_context
from lapsewatch.store.models import Domain
from lapsewatch.verdict import Verdict
from lapsewatch.web.context import WebContext, get_context
from lapsewatch.web.middleware import key_of
from lapsewatch.web.queries import storable

__all__ = [
    "DANGER_TOKENS",
    "STATUS_PATH",
    "TOKENS",
    "StatusAnswer",
    "StatusApiSettings",
    "UnknownAs",
    "router",
    "tokens_for",
]

STATUS_PATH = "/domain-management/v1/tools/status"
STATE = "status_api"
"""Where ``create_app`` keeps the :class:`StatusApiSettings` (``app.state.status_api``)."""

PYPI_UNVERIFY = frozenset({"undelegated", "inactive", "expiring", "deleting", "unknown"})
"""The tokens on which Warehouse (PyPI) unverifies an address."""

TOKENS: Mapping[str, tuple[str, ...]] = {
    "registered": ("active",),
    "available": ("undelegated", "inactive"),
    "redemption": ("deleting",),
    "pending_delete": ("deleting",),
    "expiring": ("expiring",),
    "for_sale": ("active", "marketed"),
    # The current registration is active, but not the one the address was verified
    # under (re-registered), or the mail goes through a lapsed domain: both must be
    # unverified, so both carry a token PyPI's list catches.
    "reregistered": ("active", "expiring"),
    "mail_host_lapsed": ("active", "expiring"),
    "unknown": ("unknown",),
}
"""Verdict (by value) → Fastly status tokens."""

DANGER_TOKENS = ("expiring",)
"""For a dangerous verdict :data:`TOKENS` does not name (a verdict added later)."""

_ALSO_DANGEROUS = frozenset({"mail_host_lapsed"})
"""Dangerous verdicts named by value, whether or not this version's ``Verdict`` has them."""

_UNAUTHORIZED = {"msg": "Provided credentials are missing or invalid"}


class UnknownAs(StrEnum):
    unknown = "unknown"
    """Fastly's ``unknown`` token (PyPI unverifies on it)."""
    error = "error"
    """503: a Fastly-shaped client treats it as a failed lookup and asks again later
    (PyPI keeps the address verified and retries in about a week)."""


@dataclass(frozen=True)
class StatusApiSettings:
    max_age: timedelta = timedelta(hours=24)
    """A stored verdict younger than this is answered from the store."""
    live_rate: float = 5.0
    """Live checks a second (and at once) this process starts; 429 above."""
    unknown_as: UnknownAs = UnknownAs.unknown
    expiring_days: int = 30
    """``registered`` within this many days of its expiration date also says ``expiring``."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StatusApiSettings:
        env = os.environ if environ is None else environ

        def number(name: str, default: float, minimum: float) -> float:
            text = env.get(f"LAPSEWATCH_{name}")
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"LAPSEWATCH_{name} must be a number, not {text!r}") from None
            if not math.isfinite(value) or value < minimum:
                raise ConfigError(f"LAPSEWATCH_{name} must be at least {minimum:g}")
            return value

        unknown = (env.get("LAPSEWATCH_STATUS_UNKNOWN_AS") or "unknown").strip().lower()
        if unknown not in UnknownAs.__members__:
            raise ConfigError("LAPSEWATCH_STATUS_UNKNOWN_AS must be 'unknown' or 'error'")
        return cls(
            max_age=timedelta(hours=number("STATUS_MAX_AGE_HOURS", 24.0, 0.0)),
            live_rate=number("STATUS_LIVE_RATE", 5.0, 0.01),
            unknown_as=UnknownAs(unknown),
            expiring_days=int(number("STATUS_EXPIRING_DAYS", 30.0, 0.0)),
        )


def _dangerous(value: str) -> bool | None:
    """Whether the verdict named ``value`` unverifies; ``None``: not a verdict we know."""
    if value in _ALSO_DANGEROUS:
        return True
    try:
        return Verdict(value).dangerous
    except ValueError:
        return None


def tokens_for(
    verdict: str,
    *,
    expires_at: datetime | None,
    now: datetime,
    expiring_days: int = 30,
) -> tuple[str, ...]:
    """The Fastly status tokens for a verdict (by its value)."""
    tokens = TOKENS.get(verdict)
    if tokens is None:
        dangerous = _dangerous(verdict)
        known = dangerous is not None
        tokens = (DANGER_TOKENS if dangerous else ("active",)) if known else ("unknown",)
    if (
        verdict == "registered"
        and expires_at is not None
        and expiring_days > 0
        and expires_at - now <= timedelta(days=expiring_days)
    ):
        tokens = (*tokens, "expiring")
    return tokens


@dataclass(frozen=True)
class StatusAnswer:
    """One answer, before it is shaped like Fastly's."""

    domain: str
    """The registrable domain lapsewatch judged."""
    verdict: str
    reason: str
    checked_at: datetime | None
    expires_at: datetime | None
    answered_from: str
    """``store``, ``live`` or ``free_provider``."""
    pending: str | None = None


class _LiveLimiter:
    """A token bucket of live checks (``rate`` a second, as many at once), per process."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._at = time.monotonic()
        self._lock = threading.Lock()
        self._running = threading.BoundedSemaphore(max(1, math.ceil(rate)))

    def try_acquire(self) -> bool:
        if not self._running.acquire(blocking=False):
            return False
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
        self._running.release()
        return False

    def release(self) -> None:
        self._running.release()

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(1.0 / self.rate))


_LIMITERS_LOCK = threading.Lock()


def _settings(request: Request) -> StatusApiSettings:
    found = getattr(request.app.state, STATE, None)
    return found if isinstance(found, StatusApiSettings) else StatusApiSettings()


def _limiter(request: Request, settings: StatusApiSettings) -> _LiveLimiter:
    with _LIMITERS_LOCK:
        limiter = getattr(request.app.state, "status_api_limiter", None)
        if not isinstance(limiter, _LiveLimiter) or limiter.rate != settings.live_rate:
            limiter = _LiveLimiter(settings.live_rate)
            request.app.state.status_api_limiter = limiter
        return limiter


def _stored(context: WebContext, name: str, max_age: timedelta) -> StatusAnswer | None:
    now = context.clock()
    with context.sessions() as session:
        row = session.get(Domain, name)
        if row is None or row.last_verdict is None or row.last_checked_at is None:
            return None
        if now - row.last_checked_at > max_age:
            return None
        return StatusAnswer(
            name,
            row.last_verdict,
            row.last_reason or "",
            row.last_checked_at,
            row.expires_at,
            "store",
        )


def _live(context: WebContext, name: str) -> StatusAnswer:
    """Check now with the cycle's checker; apply, store and count the result as the
    cycle does (``metrics.count_result``: checks by verdict, each source's outcome, the
    addresses unverified, and the result's log line)."""
    now = context.clock()
    with log_context(domain=name):
        with context.sessions() as session:
            due = select_due(
                session, now=now, limit=None, everything=True, names=[name], include_leased=True
            )
            row = session.get(Domain, name)
            # No verified address to compare with: the registration date seen before
            # stands in for it, so a domain that changed hands since is still caught.
            since = due[0].earliest_verified_at if due else (row.registered_at if row else None)
            target = known_due(name, since, row)
        # The cycle's checker meters its sources itself (cycle.domaincheck); a
        # test's or an embedder's checker is asked as it is.
        result = context.checker.check(target, now=now)
        with context.sessions.begin() as session:
            settled = settle_results(session, [result], policy=context.policy)[0]
            unverified = apply_result(session, settled, policy=context.policy)
        metrics.count_result(settled, unverified)
    decision = settled.decision
    return StatusAnswer(
        name,
        decision.verdict.value,
        decision.reason,
        settled.checked_at,
        decision.expires_at,
        "live",
        pending=decision.pending.value if decision.pending is not None else None,
    )


def _fastly_error(status: int, msg: str, detail: str = "", **headers: str) -> JSONResponse:
    body = {"msg": msg, **({"detail": detail} if detail else {})}
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **headers})


router = APIRouter(include_in_schema=False)


@router.get(STATUS_PATH)
async def domain_status(
    request: Request,
    domain: Annotated[str, Query(max_length=320)] = "",
    scope: Annotated[str, Query(max_length=32)] = "estimate",
    fastly_key: Annotated[str, Header(alias="Fastly-Key", max_length=256)] = "",
) -> Response:
    context = get_context(request)
    key = await key_of(context.engine, fastly_key.strip())
    if key is None:
        metrics.count_status_answer("unauthorized")
        return JSONResponse(_UNAUTHORIZED, status_code=401)
    asked = domain.strip().lower().rstrip(".")
    if not asked:
        return _fastly_error(400, "Bad request", "domain is required")
    try:
        parsed = domains.parse(asked, free_providers=context.free_providers)
    except domains.DomainError as exc:
        return _fastly_error(400, "Bad request", f"not a domain name: {exc}")
    if not storable(parsed.domain):
        return _fastly_error(400, "Bad request", "not a domain name")
    settings = _settings(request)
    answer: StatusAnswer | None
    if parsed.free_provider:
        answer = StatusAnswer(
            parsed.domain,
            Verdict.REGISTERED.value,
            f"{parsed.domain} is a well-known mail provider; not checked",
            None,
            None,
            "free_provider",
        )
    else:
        answer = await anyio.to_thread.run_sync(_stored, context, parsed.domain, settings.max_age)
    if answer is None:
        limiter = _limiter(request, settings)
        if not limiter.try_acquire():
            metrics.count_status_answer("rate_limited")
            return _fastly_error(
                429,
                "Too many requests",
                "live checks are rate-limited; retry later",
                **{"Retry-After": str(limiter.retry_after)},
            )
        try:
            answer = await anyio.to_thread.run_sync(_live, context, parsed.domain)
        except Exception as exc:
            metrics.count_status_answer("error")
            return _fastly_error(
                503,
                "Service unavailable",
                f"the check failed: {type(exc).__name__}",
                **{"Retry-After": "60"},
            )
        finally:
            limiter.release()
    if answer.verdict == Verdict.UNKNOWN.value and settings.unknown_as is UnknownAs.error:
        metrics.count_status_answer("error")
        return _fastly_error(
            503,
            "Service unavailable",
            f"no source could say what became of {answer.domain}; ask again later",
            **{"Retry-After": "3600"},
        )
    metrics.count_status_answer(answer.answered_from)
    return JSONResponse(
        _shape(asked, scope, answer, settings, context.clock()),
        headers={"Cache-Control": "no-store"},
    )


def _shape(
    asked: str, scope: str, answer: StatusAnswer, settings: StatusApiSettings, now: datetime
) -> dict[str, Any]:
    tokens = tokens_for(
        answer.verdict, expires_at=answer.expires_at, now=now, expiring_days=settings.expiring_days
    )
    dangerous = _dangerous(answer.verdict)
    return {
        "domain": asked,
        "zone": answer.domain.split(".", 1)[1] if "." in answer.domain else answer.domain,
        "status": " ".join(tokens),
        "scope": scope,
        "tags": "",
        "lapsewatch": {
            "domain": answer.domain,
            "verdict": answer.verdict,
            "reason": answer.reason,
            "unverify": bool(dangerous),
            "pending_confirmation": answer.pending,
            "checked_at": isoformat(answer.checked_at),
            "expires_at": isoformat(answer.expires_at),
            "answered_from": answer.answered_from,
        },
    }
