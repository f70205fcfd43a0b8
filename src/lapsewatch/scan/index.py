"""Core metadata from a package index that speaks PyPI's JSON API.

``BASE/<name>/json`` (the newest release) or ``BASE/<name>/<version>/json``;
the fields used are ``info.author_email``, ``info.maintainer_email``,
``info.author``, ``info.maintainer``, the upload time of the release's files and,
on a project page, the upload time of every release (``releases``), which the
ctx-pattern check needs to find the release that first published an address.
Requests run concurrently under a cap, with a bounded retry. When the index
cannot be reached at all (offline, DNS failure, refused connection) the first
failure stops further requests: every other package gets the same error at
once instead of waiting for its own timeouts. Answers, including "not found",
are cached; errors are not, so the next run asks again.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from packaging.utils import canonicalize_name

from lapsewatch.dates import parse_datetime
from lapsewatch.scan.cache import DiskCache
from lapsewatch.scan.packages import Origin, PackageMetadata, PackageRef
from lapsewatch.sources import _http

__all__ = [
    "DEFAULT_INDEX_URL",
    "IndexAnswer",
    "IndexClient",
    "IndexOutcome",
    "check_index_url",
    "metadata_from_json",
]

DEFAULT_INDEX_URL = "https://pypi.org/pypi"
CACHE_NAMESPACE = "index-v2"
"""v2: entries carry the release history (``release_times``)."""


class IndexOutcome(StrEnum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    ERROR = "error"


@dataclass(frozen=True)
class IndexAnswer:
    """What the index said about one requested package."""

    ref: PackageRef
    outcome: IndexOutcome
    detail: str
    metadata: PackageMetadata | None = None
    cached: bool = False


def connect_failure(exc: BaseException) -> bool:
    """Whether the server could not be reached at all (also when wrapped by ``_http``)."""
    connect = (httpx.ConnectError, httpx.ConnectTimeout)
    return isinstance(exc, connect) or isinstance(exc.__cause__, connect)


def check_index_url(url: str) -> str:
    """The base URL without a trailing slash; ``ValueError`` unless http(s) with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL like {DEFAULT_INDEX_URL}")
    return url.rstrip("/")


def _published(data: dict[str, Any], key: str = "urls") -> Any:
    """Earliest upload time of the release's files (PyPI lists them under ``urls``)."""
    times = []
    files = data.get(key)
    for item in files if isinstance(files, list) else []:
        if not isinstance(item, dict):
            continue
        raw = item.get("upload_time_iso_8601") or item.get("upload_time")
        if isinstance(raw, str):
            try:
                times.append(parse_datetime(raw))
            except ValueError:
                continue
    return min(times, default=None)


def metadata_from_json(data: Any) -> PackageMetadata:
    """The JSON API document → metadata; ``ValueError`` when it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("info"), dict):
        raise ValueError("the answer has no 'info' object")
    info = data["info"]
    name = info.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("the answer has no package name")

    def text(key: str) -> str | None:
        value = info.get(key)
        return value if isinstance(value, str) else None

    return PackageMetadata(
        name=name,
        version=text("version"),
        author_email=text("author_email"),
        maintainer_email=text("maintainer_email"),
        author=text("author"),
        maintainer=text("maintainer"),
        published_at=_published(data),
        release_times=_release_times(data.get("releases")),
    )


def _release_times(releases: Any) -> tuple[tuple[str, Any], ...]:
    """``releases`` (project pages only) → (version, first upload), oldest first."""
    if not isinstance(releases, dict):
        return ()
    found = []
    for version, files in releases.items():
        when = _published({"files": files}, "files")
        if isinstance(version, str) and when is not None:
            found.append((version, when))
    return tuple(sorted(found, key=lambda pair: pair[1]))


_HISTORY = Origin("history")


class IndexClient:
    """Fetches metadata for package references; one instance per scan."""

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        *,
        cache: DiskCache | None = None,
        attempts: int = 3,
        concurrency: int = 10,
        max_retry_after: float = 30.0,
    ) -> None:
        self.base_url = check_index_url(base_url)
        self._client = client
        self._cache = cache
        self._attempts = attempts
        self._max_retry_after = max_retry_after
        self._slots = asyncio.Semaphore(concurrency)
        self._down: str | None = None
        self.requests = 0

    def project(self, name: str) -> PackageRef:
        """The unpinned reference whose answer (the project page) lists every release."""
        return PackageRef(name, None, _HISTORY)

    def url_for(self, ref: PackageRef) -> str:
        name = quote(canonicalize_name(ref.name), safe="")
        if ref.version is None:
            return f"{self.base_url}/{name}/json"
        return f"{self.base_url}/{name}/{quote(ref.version, safe='')}/json"

    def _cache_key(self, ref: PackageRef) -> str:
        return "\n".join((self.base_url, canonicalize_name(ref.name), ref.version or ""))

    async def fetch(self, ref: PackageRef) -> IndexAnswer:
        """Never raises for index trouble: that is an ``ERROR`` answer."""
        cached = self._from_cache(ref)
        if cached is not None:
            return cached
        async with self._slots:
            if self._down is not None:
                return IndexAnswer(ref, IndexOutcome.ERROR, self._down)
            answer = await self._ask(ref)
        if answer.outcome is not IndexOutcome.ERROR and self._cache is not None:
            value = {
                "outcome": answer.outcome.value,
                "detail": answer.detail,
                "metadata": answer.metadata.to_dict() if answer.metadata else None,
            }
            self._cache.put(CACHE_NAMESPACE, self._cache_key(ref), value)
        return answer

    def _from_cache(self, ref: PackageRef) -> IndexAnswer | None:
        if self._cache is None:
            return None
        value = self._cache.get(CACHE_NAMESPACE, self._cache_key(ref))
        if not isinstance(value, dict):
            return None
        try:
            outcome = IndexOutcome(value["outcome"])
            raw = value.get("metadata")
            metadata = PackageMetadata.from_dict(raw) if raw is not None else None
            detail = str(value["detail"])
        except (KeyError, ValueError):
            return None
        if outcome is IndexOutcome.FOUND and metadata is None:
            return None
        return IndexAnswer(ref, outcome, detail, metadata, cached=True)

    async def _ask(self, ref: PackageRef) -> IndexAnswer:
        url = self.url_for(ref)
        what = f"{ref.name} {ref.version}" if ref.version else ref.name
        self.requests += 1
        try:
            response = await _http.get(
                self._client,
                url,
                headers={"Accept": "application/json"},
                attempts=self._attempts,
                max_retry_after=self._max_retry_after,
            )
        except httpx.TransportError as exc:
            timeout = self._client.timeout.read or 0.0
            why = _http.describe_transport_error(exc, timeout)
            if connect_failure(exc):
                self._down = f"index {self.base_url} unreachable: {why}"
                return IndexAnswer(ref, IndexOutcome.ERROR, self._down)
            return IndexAnswer(ref, IndexOutcome.ERROR, f"index {self.base_url}: {why}")
        host = urlsplit(str(response.url)).netloc
        if response.status_code == 404:
            missing = (
                f"no version {ref.version} of {ref.name}" if ref.version else f"no package {what}"
            )
            return IndexAnswer(ref, IndexOutcome.NOT_FOUND, f"{missing} on {host}")
        if response.status_code != 200:
            return IndexAnswer(
                ref, IndexOutcome.ERROR, f"HTTP {response.status_code} from {host} for {what}"
            )
        try:
            metadata = metadata_from_json(json.loads(response.content))
        except ValueError as exc:
            return IndexAnswer(ref, IndexOutcome.ERROR, f"unreadable answer from {host}: {exc}")
        return IndexAnswer(ref, IndexOutcome.FOUND, f"read from {host}", metadata)
