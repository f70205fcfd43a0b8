"""Maintainer addresses from an npm registry: one packument per package name.

The packument (``BASE/<name>``, a scoped name as ``BASE/@scope%2fname``) is the
full document, not the abbreviated install format, which drops the people.
Per version, addresses come from ``maintainers``, ``_npmUser``, ``author`` and
``contributors`` (each a ``Name <email> (url)`` string or a ``{name, email}``
object); the top-level ``time`` map gives each version's publish date. Because
every version is in one document, the earliest version carrying an address
(the ctx-pattern comparison) is found here without further requests.

Ranges (``^1.2.0``, ``1.x || >=3``) are resolved as npm does: the ``latest``
dist-tag when it satisfies the range, else the highest satisfying version
(``semantic_version.NpmSpec``). A name asked for in several versions is fetched
once. Answers are cached per (name, version or range); registry errors are not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import semantic_version  # type: ignore[import-untyped, unused-ignore]

from lapsewatch.dates import parse_datetime
from lapsewatch.scan.addresses import extract
from lapsewatch.scan.cache import DiskCache
from lapsewatch.scan.index import IndexAnswer, IndexOutcome, connect_failure
from lapsewatch.scan.packages import FirstPublished, PackageMetadata, PackageRef
from lapsewatch.sources import _http

__all__ = [
    "DEFAULT_NPM_REGISTRY_URL",
    "NpmClient",
    "Packument",
    "check_registry_url",
    "packument_url",
    "parse_packument",
    "person_text",
]

DEFAULT_NPM_REGISTRY_URL = "https://registry.npmjs.org"
CACHE_NAMESPACE = "npm"
PERSON_FIELDS = ("maintainers", "_npmUser", "author", "contributors")


def check_registry_url(url: str) -> str:
    """The base URL without a trailing slash; ``ValueError`` unless http(s) with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL like {DEFAULT_NPM_REGISTRY_URL}")
    return url.rstrip("/")


def packument_url(base: str, name: str) -> str:
    """``BASE/left-pad``; ``BASE/@scope%2fname`` for a scoped name, as npm asks."""
    if name.startswith("@") and "/" in name:
        scope, rest = name[1:].split("/", 1)
        return f"{base}/@{quote(scope, safe='')}%2f{quote(rest, safe='')}"
    return f"{base}/{quote(name, safe='')}"


def person_text(value: Any) -> str | None:
    """A person as text: a string as written, or an object's ``email`` (a name is no address)."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict):
        email = value.get("email")
        if isinstance(email, str) and email.strip():
            return email.strip()
    return None


def _people(manifest: Any, fallback_maintainers: Any) -> tuple[tuple[str, str], ...]:
    """(field, text) for every person of one version."""
    if not isinstance(manifest, dict):
        return ()
    found: list[tuple[str, str]] = []
    for name in PERSON_FIELDS:
        value = manifest.get(name)
        if name == "maintainers" and value is None:
            value = fallback_maintainers  # very old versions list none of their own
        items = value if isinstance(value, list) else [value]
        for item in items:
            text = person_text(item)
            if text is not None:
                found.append((name, text))
    return tuple(dict.fromkeys(found))


@lru_cache(maxsize=65536)
def _addresses_in(field_name: str, text: str) -> tuple[str, ...]:
    """Lower-case addresses in one person text; memoised: packuments repeat the same people."""
    return tuple(
        item.address.lower() for item in extract(field_name, text) if item.parsed is not None
    )


def _version(text: str) -> Any:
    try:
        return semantic_version.Version(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Packument:
    """What the scan keeps of a packument: people and publish time per version."""

    name: str
    people: dict[str, tuple[tuple[str, str], ...]]
    times: dict[str, datetime]
    dist_tags: dict[str, str]
    _firsts: dict[str, FirstPublished] = field(default_factory=dict, compare=False)

    def resolve(self, ref: PackageRef) -> str | None:
        """The version a pin, a range, a dist-tag or nothing (``latest``) stands for."""
        if ref.version is not None:
            return ref.version if ref.version in self.people else None
        wanted = (ref.spec or "").strip()
        if wanted in ("", "*", "latest") or wanted in self.dist_tags:
            tag = self.dist_tags.get(wanted or "latest")
            if tag in self.people:
                return tag
            if wanted not in ("", "*", "latest"):
                return None
            wanted = "*"
        spec = semantic_version.NpmSpec(wanted)  # ValueError for an invalid range
        candidates = [v for v in map(_version, self.people) if v is not None and v in spec]
        if not candidates:
            return None
        latest = _version(self.dist_tags.get("latest", ""))
        chosen = latest if latest is not None and latest in candidates else max(candidates)
        return str(chosen)

    def first_published(self) -> dict[str, FirstPublished]:
        """Address → the earliest version (by publish time) whose people carry it."""
        if self._firsts or not self.times:
            return self._firsts
        for version, when in sorted(self.times.items(), key=lambda item: item[1]):
            for field_name, text in self.people.get(version, ()):
                for address in _addresses_in(field_name, text):
                    if address not in self._firsts:
                        self._firsts[address] = FirstPublished(address, version, when)
        return self._firsts

    def metadata(self, version: str) -> PackageMetadata:
        people = self.people[version]
        firsts = self.first_published()
        mine = dict.fromkeys(a for f, t in people for a in _addresses_in(f, t))
        return PackageMetadata(
            name=self.name,
            version=version,
            published_at=self.times.get(version),
            ecosystem="npm",
            people=people,
            first_published=tuple(firsts[a] for a in mine if a in firsts),
        )


def _times(raw: Any, versions: Iterable[str]) -> dict[str, datetime]:
    if not isinstance(raw, dict):
        return {}
    known = set(versions)
    times: dict[str, datetime] = {}
    for version, text in raw.items():
        if version in known and isinstance(text, str):
            try:
                times[version] = parse_datetime(text)
            except ValueError:
                continue  # one odd date must not hide the others
    return times


def parse_packument(data: Any, name: str) -> Packument:
    """A decoded packument → :class:`Packument`; ``ValueError`` when it is not one."""
    if not isinstance(data, dict):
        raise ValueError("the packument is not a JSON object")
    versions = data.get("versions")
    if not isinstance(versions, dict):
        raise ValueError("the packument has no 'versions' object")
    fallback = data.get("maintainers")
    people = {v: _people(m, fallback) for v, m in versions.items() if isinstance(v, str)}
    tags = data.get("dist-tags")
    dist_tags = (
        {k: v for k, v in tags.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(tags, dict)
        else {}
    )
    shown = data.get("name") if isinstance(data.get("name"), str) else name
    return Packument(str(shown), people, _times(data.get("time"), people), dist_tags)


def _decode(content: bytes) -> Any:
    """JSON, or a ``ValueError`` that says where it stops being JSON."""
    try:
        return json.loads(content)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None


class NpmClient:
    """Fetches packuments for npm references; one instance per scan."""

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        *,
        cache: DiskCache | None = None,
        attempts: int = 3,
        concurrency: int = 16,
        max_retry_after: float = 30.0,
    ) -> None:
        self.base_url = check_registry_url(base_url)
        self._client = client
        self._cache = cache
        self._attempts = attempts
        self._max_retry_after = max_retry_after
        self._slots = asyncio.Semaphore(concurrency)
        self._down: str | None = None
        self._packuments: dict[str, asyncio.Task[Packument | IndexAnswer]] = {}
        self.requests = 0

    def _cache_key(self, ref: PackageRef) -> str:
        wanted = ref.version if ref.version is not None else f"spec:{ref.spec or ''}"
        return "\n".join((self.base_url, ref.name, wanted))

    async def fetch(self, ref: PackageRef) -> IndexAnswer:
        """Never raises for registry trouble: that is an ``ERROR`` answer."""
        cached = self._from_cache(ref)
        if cached is not None:
            return cached
        task = self._packuments.get(ref.name)
        if task is None:
            task = asyncio.ensure_future(self._packument(ref))
            self._packuments[ref.name] = task
        got = await task
        answer = got if isinstance(got, IndexAnswer) else self._answer(ref, got)
        answer = IndexAnswer(ref, answer.outcome, answer.detail, answer.metadata)
        if answer.outcome is not IndexOutcome.ERROR and self._cache is not None:
            value = {
                "outcome": answer.outcome.value,
                "detail": answer.detail,
                "metadata": answer.metadata.to_dict() if answer.metadata else None,
            }
            self._cache.put(CACHE_NAMESPACE, self._cache_key(ref), value)
        return answer

    def _answer(self, ref: PackageRef, packument: Packument) -> IndexAnswer:
        host = urlsplit(self.base_url).netloc
        try:
            version = packument.resolve(ref)
        except ValueError as exc:
            return IndexAnswer(ref, IndexOutcome.ERROR, f"{ref.shown}: not an npm range: {exc}")
        if version is None:
            wanted = ref.version or ref.spec or "latest"
            return IndexAnswer(
                ref, IndexOutcome.NOT_FOUND, f"no version {wanted} of {ref.name} on {host}"
            )
        return IndexAnswer(
            ref, IndexOutcome.FOUND, f"read from {host}", packument.metadata(version)
        )

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

    async def _packument(self, ref: PackageRef) -> Packument | IndexAnswer:
        async with self._slots:
            if self._down is not None:
                return IndexAnswer(ref, IndexOutcome.ERROR, self._down)
            return await self._ask(ref)

    async def _ask(self, ref: PackageRef) -> Packument | IndexAnswer:
        url = packument_url(self.base_url, ref.name)
        self.requests += 1
        try:
            response = await _http.get(
                self._client,
                url,
                headers={"Accept": "application/json"},  # the full packument, with people
                attempts=self._attempts,
                max_retry_after=self._max_retry_after,
            )
        except httpx.TransportError as exc:
            timeout = self._client.timeout.read or 0.0
            why = _http.describe_transport_error(exc, timeout)
            if connect_failure(exc):
                self._down = f"npm registry {self.base_url} unreachable: {why}"
                return IndexAnswer(ref, IndexOutcome.ERROR, self._down)
            return IndexAnswer(ref, IndexOutcome.ERROR, f"npm registry {self.base_url}: {why}")
        host = urlsplit(str(response.url)).netloc
        if response.status_code == 404:
            return IndexAnswer(ref, IndexOutcome.NOT_FOUND, f"no package {ref.name} on {host}")
        if response.status_code != 200:
            return IndexAnswer(
                ref, IndexOutcome.ERROR, f"HTTP {response.status_code} from {host} for {ref.name}"
            )
        try:
            return parse_packument(_decode(response.content), ref.name)
        except ValueError as exc:
            return IndexAnswer(
                ref, IndexOutcome.ERROR, f"unreadable packument for {ref.name} at {url}: {exc}"
            )
