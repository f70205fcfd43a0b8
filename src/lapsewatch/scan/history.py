"""The ctx pattern: which release first published an address.

A maintainer's domain lapses, someone re-registers it, resets the password and
publishes a release of their own. Scanned unpinned, that newest release is
*newer* than the re-registration, so comparing the registration date with it
says "registered": the takeover hides itself. The right moment to compare with
is when the registry first trusted the address: the earliest release that
carries it.

npm packuments list every version's people and publish time, so the npm client
fills :attr:`PackageMetadata.first_published` itself. PyPI's JSON API gives one
release's metadata per request, so this module asks only where the answer can
change a verdict: the domain's registration date is known and earlier than the
scanned release, and some release is older than that registration. It then
reads those older releases, oldest first (at most :data:`MAX_RELEASES` per
package), until each such address is found.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from lapsewatch.scan.addresses import Extracted, extract
from lapsewatch.scan.index import IndexClient
from lapsewatch.scan.packages import FirstPublished, PackageMetadata, PackageRef
from lapsewatch.sources import Observation
from lapsewatch.verdict import decide

__all__ = ["MAX_RELEASES", "registered_at", "with_first_releases"]

MAX_RELEASES = 8
"""Older PyPI releases read per package at most (the address is nearly always in the first)."""

_Key = tuple[str, str, str | None]


def registered_at(
    domain: str, observations: Mapping[str, tuple[Observation, ...]], now: datetime
) -> datetime | None:
    """The registration date in the registry's own record, when a source gave one."""
    seen = observations.get(domain, ())
    return decide(domain, seen, now=now).registered_at if seen else None


def _addresses(meta: PackageMetadata) -> set[str]:
    return {
        item.address.lower()
        for field, value in meta.address_fields()
        for item in extract(field, value)
        if item.parsed is not None
    }


def _suspects(
    meta: PackageMetadata,
    extracted: Sequence[Extracted],
    observations: Mapping[str, tuple[Observation, ...]],
    now: datetime,
) -> dict[str, datetime]:
    """Address → registration date, where an older release could change the verdict."""
    published = meta.published_at
    if published is None:
        return {}
    found: dict[str, datetime] = {}
    for item in extracted:
        parsed = item.parsed
        if parsed is None or parsed.free_provider:
            continue
        registered = registered_at(parsed.domain, observations, now)
        if registered is not None and registered <= published:
            found[item.address.lower()] = registered
    return found


async def _first_on_pypi(
    meta: PackageMetadata, suspects: dict[str, datetime], index: IndexClient
) -> tuple[PackageMetadata, str | None]:
    times = meta.release_times
    if not times:
        answer = await index.fetch(index.project(meta.name))
        if answer.metadata is None:
            return meta, None
        times = answer.metadata.release_times
    latest_registration = max(suspects.values())
    older = [(v, t) for v, t in times if t < latest_registration and v != meta.version]
    if not older:
        return meta, None
    firsts: list[FirstPublished] = []
    missing = dict(suspects)
    for version, uploaded in older[:MAX_RELEASES]:
        answer = await index.fetch(PackageRef(meta.name, version, meta.origins[0]))
        if answer.metadata is None:
            continue
        carried = _addresses(answer.metadata)
        for address, registered in list(missing.items()):
            if uploaded < registered and address in carried:
                firsts.append(FirstPublished(address, version, uploaded))
                del missing[address]
        if not missing:
            break
    note = None
    if missing and len(older) > MAX_RELEASES:
        note = (
            f"{meta.name} {meta.version}: only the {MAX_RELEASES} oldest of {len(older)} "
            "releases were read for the release that first published its addresses"
        )
    return replace(meta, first_published=(*meta.first_published, *firsts)), note


async def with_first_releases(
    packages: Mapping[_Key, PackageMetadata],
    addresses: Mapping[_Key, Sequence[Extracted]],
    observations: Mapping[str, tuple[Observation, ...]],
    *,
    now: datetime,
    index: IndexClient | None,
) -> tuple[dict[_Key, PackageMetadata], tuple[str, ...]]:
    """``packages`` with the first release of each address that could hide a takeover."""
    result = dict(packages)
    if index is None:
        return result, ()
    jobs: dict[_Key, asyncio.Task[tuple[PackageMetadata, str | None]]] = {}
    async with asyncio.TaskGroup() as group:
        for key, meta in packages.items():
            if meta.ecosystem != "pypi" or not meta.origins:
                continue
            suspects = _suspects(meta, addresses[key], observations, now)
            if suspects:
                jobs[key] = group.create_task(_first_on_pypi(meta, suspects, index))
    notes = []
    for key, job in jobs.items():
        result[key], note = job.result()
        if note:
            notes.append(note)
    return result, tuple(notes)
