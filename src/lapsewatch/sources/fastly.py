"""Fastly's Domain Research API, status endpoint (formerly Domainr).

This is the service PyPI relies on. It says nothing about dates, but it knows
about the aftermarket (``parked``, ``marketed``) which no registry record does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from lapsewatch.config import Settings
from lapsewatch.sources import _http
from lapsewatch.sources.interface import Observation, Outcome, Source, truncate

__all__ = ["STATUS_PATH", "FastlySource", "status_tokens"]

STATUS_PATH = "/domain-management/v1/tools/status"


def status_tokens(data: Any, domain: str) -> tuple[str, ...] | None:
    """The status tokens for ``domain`` from either answer shape, or ``None``.

    Current shape: ``{"domain": d, "status": "active parked"}``; the older
    Domainr v2 shape: ``{"status": [{"domain": d, "status": "..."}]}``.
    """
    if not isinstance(data, dict):
        return None
    status = data.get("status")
    if isinstance(status, str):
        answered_for = data.get("domain")
        if isinstance(answered_for, str) and answered_for.lower().rstrip(".") != domain:
            return None
        return tuple(dict.fromkeys(status.lower().split()))
    if isinstance(status, list):
        entries = [e for e in status if isinstance(e, dict) and isinstance(e.get("status"), str)]
        for entry in entries:
            name = entry.get("domain")
            if isinstance(name, str) and name.lower().rstrip(".") == domain:
                return tuple(dict.fromkeys(entry["status"].lower().split()))
    return None


class FastlySource(Source):
    """Ask Fastly's status endpoint; used only when an API key is configured."""

    name = "fastly"
    paces_requests = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        key: str,
        attempts: int = 3,
        max_retry_after: float = 30.0,
        deadline: float | None = None,
        max_bytes: int = _http.DEFAULT_MAX_BYTES,
    ) -> None:
        self._client = client
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._url = base_url.rstrip("/") + STATUS_PATH
        self._key = key
        self._attempts = attempts
        self._max_retry_after = max_retry_after

    async def observe(self, domain: str) -> Observation:
        try:
            response = await _http.get(
                self._client,
                self._url,
                params={"domain": domain, "scope": "estimate"},
                headers={"Fastly-Key": self._key, "Accept": "application/json"},
                attempts=self._attempts,
                max_retry_after=self._max_retry_after,
                pacer=self.pacer,
                deadline=self._deadline,
                max_bytes=self._max_bytes,
            )
        except httpx.TransportError as exc:
            why = _http.describe_transport_error(
                exc, self._deadline or self._client.timeout.read or 0.0
            )
            return Observation.error(self.name, domain, f"{why} ({urlsplit(self._url).netloc})")
        host = response.host
        evidence = truncate(
            f"HTTP {response.status_code} {self._url}?domain={domain}\n{response.text}"
        )
        code = response.status_code
        if code != 200:
            wait = _http.retry_after_seconds(response) if code == 429 else None
            why = {401: "API key rejected", 403: "API key not allowed"}.get(code, f"HTTP {code}")
            return Observation.error(
                self.name, domain, f"{why} from {host}", evidence=evidence, retry_after=wait
            )
        try:
            tokens = status_tokens(json.loads(response.content), domain)
        except (ValueError, RecursionError):
            tokens = None
        if tokens is None:
            return Observation.error(
                self.name, domain, f"unreadable status answer from {host}", evidence=evidence
            )
        found: bool | None = None
        if "active" in tokens:
            found = True
        elif "inactive" in tokens:
            found = False
        return Observation(
            source=self.name,
            domain=domain,
            outcome=Outcome.ANSWERED,
            detail=f"status {' '.join(tokens) or '(empty)'} ({host})",
            found=found,
            status=tokens,
            evidence=evidence,
        )


def from_settings(
    settings: Settings, client: httpx.AsyncClient, built: Mapping[str, Source]
) -> FastlySource | None:
    """The catalog's factory (:mod:`lapsewatch.source_catalog`); none without a key."""
    if not settings.fastly_key:
        return None
    return FastlySource(
        client,
        base_url=settings.fastly_url,
        key=settings.fastly_key,
        attempts=settings.attempts,
        max_retry_after=settings.max_retry_after,
        deadline=settings.timeout,
        max_bytes=settings.max_response_bytes,
    )
