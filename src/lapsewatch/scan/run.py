"""One scan: inputs → metadata → addresses → each distinct domain checked once →
first releases (the ctx pattern) → findings.

The phases run one after the other (all metadata first) so every domain is
known before any is checked, and a domain shared by fifty packages is asked
about once, whichever ecosystem (PyPI, npm) the packages come from. The ctx
phase only asks the index about packages whose domain was registered after
an older release (see :mod:`lapsewatch.scan.history`). Progress is reported
through a two-method protocol so the command can draw a bar and tests can stay
silent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

import httpx

from lapsewatch.config import Settings
from lapsewatch.domains import FreeProviders
from lapsewatch.scan.addresses import extract
from lapsewatch.scan.cache import DiskCache
from lapsewatch.scan.checker import check_scan_domains
from lapsewatch.scan.findings import (
    Finding,
    ScanReport,
    Status,
    finding_for_package_error,
    findings_for_package,
)
from lapsewatch.scan.history import with_first_releases
from lapsewatch.scan.index import DEFAULT_INDEX_URL, IndexAnswer, IndexClient, IndexOutcome
from lapsewatch.scan.inputs import ScanInputs
from lapsewatch.scan.npm import DEFAULT_NPM_REGISTRY_URL, NpmClient
from lapsewatch.scan.packages import Origin, PackageMetadata, PackageRef, normal_name
from lapsewatch.sources import USER_AGENT
from lapsewatch.sources._client import open_client

__all__ = ["Phase", "Progress", "ScanOptions", "run_scan", "scan"]

Phase = Literal["metadata", "domains"]


class Progress(Protocol):
    def start(self, phase: Phase, total: int) -> None: ...
    def advance(self, phase: Phase) -> None: ...


class _Silent:
    def start(self, phase: Phase, total: int) -> None:
        pass

    def advance(self, phase: Phase) -> None:
        pass


@dataclass(frozen=True)
class ScanOptions:
    settings: Settings
    index_url: str = DEFAULT_INDEX_URL
    cache: DiskCache | None = None
    free_providers: FreeProviders | None = None
    index_concurrency: int = 10
    index_timeout: float = 30.0
    """Seconds for one index answer (project pages of big packages are large)."""
    now: datetime | None = None
    npm_registry_url: str = DEFAULT_NPM_REGISTRY_URL
    npm_concurrency: int = 32
    """Packuments in flight: a front-end app has a thousand, most of them small (pnpm
    and yarn ask 16 to 50 at once; 32 took bench/scan_npm.py's metadata phase from
    6.7-7.6 s to 4.7-5.7 s for 1,350 packuments at 50 ms)."""


def scan(inputs: ScanInputs, options: ScanOptions, progress: Progress | None = None) -> ScanReport:
    """Synchronous entry point for the command."""
    return asyncio.run(run_scan(inputs, options, progress))


_Key = tuple[str, str, str | None]


async def run_scan(
    inputs: ScanInputs, options: ScanOptions, progress: Progress | None = None
) -> ScanReport:
    progress = progress or _Silent()
    now = options.now or datetime.now(UTC)
    refs = _distinct_refs(inputs.refs)
    settings = options.settings
    async with open_client(
        timeout=options.index_timeout,
        max_connections=options.index_concurrency + options.npm_concurrency,
        user_agent=USER_AGENT,
    ) as client:
        # The sources' client (aiohttp's pool: httpx's own spent 4-6 ms of CPU per
        # packument in bench/scan_npm.py, a third of the metadata phase), with the
        # scan's own connect timeout and redirects (an index may send them elsewhere).
        client.timeout = httpx.Timeout(options.index_timeout, connect=min(settings.timeout, 10.0))
        client.follow_redirects = True
        index = IndexClient(
            options.index_url,
            client,
            cache=options.cache,
            attempts=settings.attempts,
            concurrency=options.index_concurrency,
            max_retry_after=settings.max_retry_after,
        )
        npm = NpmClient(
            options.npm_registry_url,
            client,
            cache=options.cache,
            attempts=settings.attempts,
            concurrency=options.npm_concurrency,
            max_retry_after=settings.max_retry_after,
        )
        answers = await _fetch(refs, index, npm, progress)
        packages, findings = _gather(answers, refs, inputs)
        addresses = {
            key: [
                found
                for field, value in meta.address_fields()
                for found in extract(field, value, free_providers=options.free_providers)
            ]
            for key, meta in packages.items()
        }
        domains = sorted(
            {
                item.parsed.domain
                for items in addresses.values()
                for item in items
                if item.parsed is not None and not item.parsed.free_provider
            }
        )
        progress.start("domains", len(domains))
        checks = await check_scan_domains(
            domains,
            settings,
            cache=options.cache,
            on_done=lambda _domain: progress.advance("domains"),
        )
        packages, history_notes = await with_first_releases(
            packages, addresses, checks.observations, now=now, index=index
        )
    for key, meta in packages.items():
        findings.extend(findings_for_package(meta, addresses[key], checks.observations, now=now))
    findings.sort(key=_order)
    unreachable = tuple(
        domain
        for domain, seen in sorted(checks.observations.items())
        if seen and not any(o.answered for o in seen)
    )
    return ScanReport(
        findings=tuple(findings),
        notes=(*inputs.notes, *checks.notes, *history_notes),
        packages=len(packages) + sum(1 for a in answers if a.metadata is None),
        domains_asked=checks.asked,
        domains_cached=checks.cached,
        unreachable_domains=unreachable,
    )


def _gather(
    answers: Sequence[IndexAnswer], refs: dict[PackageRef, list[Origin]], inputs: ScanInputs
) -> tuple[dict[_Key, PackageMetadata], list[Finding]]:
    """Metadata by package (a range and its pin merge), and findings for what could not be read."""
    packages: dict[_Key, PackageMetadata] = {}
    findings: list[Finding] = []
    for answer, origins in zip(answers, refs.values(), strict=True):
        if answer.metadata is not None:
            _add(packages, answer.metadata.with_origins(*origins))
            continue
        status = Status.METADATA_ERROR
        if answer.outcome is IndexOutcome.NOT_FOUND:
            status = Status.NOT_FOUND
        ref = answer.ref
        findings.append(
            finding_for_package_error(
                ref.name, ref.version or ref.spec, status, answer.detail, origins, ref.ecosystem
            )
        )
    for meta in inputs.local:
        _add(packages, meta)
    return packages, findings


def _distinct_refs(refs: Sequence[PackageRef]) -> dict[PackageRef, list[Origin]]:
    """One lookup per (ecosystem, name, version), remembering every place that named it."""
    first: dict[_Key, PackageRef] = {}
    origins: dict[PackageRef, list[Origin]] = {}
    for ref in refs:
        kept = first.setdefault(ref.key, ref)
        origins.setdefault(kept, []).append(ref.origin)
    return origins


async def _fetch(
    refs: dict[PackageRef, list[Origin]], index: IndexClient, npm: NpmClient, progress: Progress
) -> list[IndexAnswer]:
    progress.start("metadata", len(refs))

    async def one(ref: PackageRef) -> IndexAnswer:
        answer = await (npm.fetch(ref) if ref.ecosystem == "npm" else index.fetch(ref))
        progress.advance("metadata")
        return answer

    return list(await asyncio.gather(*(one(ref) for ref in refs)))


def _add(packages: dict[_Key, PackageMetadata], meta: PackageMetadata) -> None:
    """Merge a package seen twice (e.g. in a lock file and installed) into one entry."""
    known = packages.get(meta.key)
    if known is None:
        packages[meta.key] = meta
    else:
        packages[meta.key] = known.with_origins(*meta.origins)


def _order(finding: Finding) -> tuple[str, str, str, str]:
    name = normal_name(finding.ecosystem, finding.package).lower()
    return finding.ecosystem, name, finding.version or "", finding.address or ""
