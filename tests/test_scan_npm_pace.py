"""The scan's domain checks are paced as the cycle's (issue #15, the 1,500-package bench).

A scan used to hold each source to one rate for all its servers (RDAP 10/s), whatever
``LAPSEWATCH_PACE`` said: 220 domains on one RDAP server took 23 s in
``bench/scan_npm.py``. It now uses the per-server pacer, as the cycle does (7 s
there). The speed itself is measured by the bench (bench/RESULTS.md), not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from lapsewatch.config import Settings
from lapsewatch.pace import ServerPacer
from lapsewatch.pace.limited import Limited
from lapsewatch.scan import checker
from lapsewatch.world import World, demo_scenario

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=2.0) as running:
        yield running


async def _paced(settings: Settings) -> tuple[ServerPacer | None, list[str]]:
    notes: list[str] = []
    async with checker._pacing(settings, notes) as pacer:
        return pacer, notes


def test_pacing_follows_lapsewatch_pace() -> None:
    pacer, notes = asyncio.run(_paced(Settings.from_env({})))
    assert isinstance(pacer, ServerPacer)  # the default: per server
    assert pacer.max_wait == 30.0  # a scan waits a Retry-After up to MAX_RETRY_AFTER
    assert notes == []
    pacer, _ = asyncio.run(_paced(Settings.from_env({"LAPSEWATCH_PACE_MAX_WAIT": "45"})))
    assert pacer is not None
    assert pacer.max_wait == 45.0
    assert asyncio.run(_paced(Settings.from_env({"LAPSEWATCH_PACE": "source"})))[0] is None
    pacer, notes = asyncio.run(_paced(Settings.from_env({"LAPSEWATCH_PACE": "fast"})))
    assert isinstance(pacer, ServerPacer)
    assert notes == ["LAPSEWATCH_PACE='fast' is neither server nor source: paced per server"]


@pytest.mark.parametrize(("pace", "paced"), [("server", True), ("source", False)])
def test_every_source_is_limited_as_configured(
    world: World, monkeypatch: pytest.MonkeyPatch, pace: str, paced: bool
) -> None:
    made: list[dict[str, Any]] = []

    class Recording(Limited):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(checker, "Limited", Recording)
    settings = Settings.from_env(
        {**world.env(), "LAPSEWATCH_PACE": pace, "LAPSEWATCH_RATE_WHOIS": "3"}
    )
    checks = asyncio.run(checker.check_scan_domains(["alive.test", "steady.wz"], settings))
    assert checks.asked == 2
    assert {o.source for o in checks.observations["steady.wz"] if o.answered} >= {"whois", "dns"}
    assert made, "no source was limited"
    assert all(isinstance(m["pacer"], ServerPacer) is paced for m in made)
    # A RATE_* that is set caps its whole source (per server), or is its one rate (source).
    assert {m["cap"] for m in made} == {None, 3.0}
    assert {m["rate"] for m in made} >= {3.0}
