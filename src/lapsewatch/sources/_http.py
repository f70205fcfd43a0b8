"""HTTP with a bounded retry, shared by the HTTP-speaking sources."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime

import httpx
import stamina

from lapsewatch.sources.interface import Pacer

__all__ = ["RETRY_STATUSES", "describe_transport_error", "get", "retry_after_seconds"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class _RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (it may be a number or an HTTP date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def get(
    client: httpx.AsyncClient,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    attempts: int,
    max_retry_after: float,
    pacer: Pacer | None = None,
) -> httpx.Response:
    """GET, retrying network errors, 429 and 5xx at most ``attempts`` times.

    A 429 waits what ``Retry-After`` asks when that is at most ``max_retry_after``;
    a longer wait is handed back to the caller (as the last response) so the
    scheduler, not this request, does the waiting. Transport errors on the last
    attempt propagate; an HTTP error status on the last attempt is returned.

    Every attempt, not just the first, waits for the ``pacer`` first, and every
    429 is reported to it: retries never get around the source's rate limit.
    """

    def backoff(exc: Exception) -> bool | float:
        if isinstance(exc, httpx.TransportError):
            return True
        if isinstance(exc, _RetryableStatus):
            wait = retry_after_seconds(exc.response)
            if wait is None:
                return True
            return wait if wait <= max_retry_after else False
        return False

    try:
        async for attempt in stamina.retry_context(
            on=backoff, attempts=attempts, timeout=None, wait_initial=0.2, wait_max=5.0
        ):
            with attempt:
                if pacer is not None:
                    await pacer.request()
                response = await client.get(url, params=params, headers=headers)
                if pacer is not None and response.status_code == 429:
                    pacer.refused(retry_after_seconds(response))
                if response.status_code in RETRY_STATUSES:
                    raise _RetryableStatus(response)
                return response
    except _RetryableStatus as exc:
        return exc.response
    raise AssertionError("unreachable: stamina either returns or raises")  # pragma: no cover


def describe_transport_error(exc: httpx.TransportError, timeout: float) -> str:
    """One line for a failed request, without a stack trace."""
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s ({type(exc).__name__})"
    return f"request failed: {type(exc).__name__}: {exc}".rstrip(": ")
