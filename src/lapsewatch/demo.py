"""The offline story for newcomers: the local world, and every domain in it checked.

Nothing leaves the machine: the sources are pointed at the world's loopback
servers through the same ``LAPSEWATCH_*`` variables an operator would set.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from lapsewatch.config import Settings
from lapsewatch.lookup import DomainReport, check_all
from lapsewatch.world import DnsBackend, Scenario, World

__all__ = ["DEMO_VERIFIED_AGO", "demo_settings", "run_story"]

DEMO_VERIFIED_AGO = timedelta(days=365)
"""The story's addresses were all verified a year ago, so a fresh registration shows."""


def demo_settings(world: World) -> Settings:
    """Short timeouts: the world's slow server is slow on purpose."""
    return Settings.from_env({**world.env(), "LAPSEWATCH_TIMEOUT": "1", "LAPSEWATCH_ATTEMPTS": "2"})


def run_story(
    scenario: Scenario, *, dns: DnsBackend = "builtin"
) -> tuple[datetime, list[DomainReport]]:
    """Start the world, check an address on every domain of the scenario, stop it."""
    verified_at = datetime.now(UTC) - DEMO_VERIFIED_AGO
    names = sorted(scenario.domains)
    with World(scenario, dns=dns, hang_seconds=3.0) as world:
        reports = asyncio.run(
            check_all(
                [f"maintainer@{name}" for name in names],
                demo_settings(world),
                verified_at=verified_at,
            )
        )
    return verified_at, reports
