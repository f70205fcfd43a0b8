"""bench/window.py: the bookkeeping on small hand-made timelines whose exposure is known
exactly, the two schedules on them, and the command line at a tiny size (no timing)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from lapsewatch.schedule import Policy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import window
import window_world as ww

DAY = 24.0
END = 200 * DAY
QUIET = {**ww.DEFAULT_PARAMS} | dict.fromkeys(
    (
        "rdap_outage_rate",
        "rdap_error_rate",
        "dns_outage_rate",
        "dns_error_rate",
        "fastly_error_rate",
        "fastly_unknown_rate",
    ),
    0.0,
)
"""Defaults without source errors: every check sees the truth."""

HEALTHY = ww.View(
    "ok",
    0,
    True,
    ("client transfer prohibited",),
    -5000 * DAY,
    300 * DAY,
    ww.OWNER_NS,
    "active",
)
GRACE_PARKED = replace(
    HEALTHY,
    phase="grace",
    rdap_status=("auto renew period",),
    expires_at=665 * DAY,
    nameservers=("ns1.expired.registrar.example",),
)
AVAILABLE = ww.View("available", 0, False, (), None, None, (), "undelegated inactive")


def new_owner(at: float, nameservers: tuple[str, ...] = ("ns1.buyer.example",)) -> ww.View:
    return ww.View(
        "new_owner",
        2,
        True,
        ("client transfer prohibited",),
        at,
        at + 365 * DAY,
        nameservers,
        "active",
    )


def world_of(
    *segments: tuple[float, ww.View],
    addresses: int = 1,
    kind: str = "dropped",
    drop_at: float | None = None,
    takeovers: tuple[float, ...] = (),
    free: int = 0,
) -> ww.World:
    """One domain with this timeline (plus ``free`` free-provider addresses)."""
    timeline = ww.Timeline()
    timeline.add(-1e12, HEALTHY)
    for start, view in segments:
        timeline.add(start, view)
    domain = ww.Domain("example.com", "gtld", kind, timeline, drop_at=drop_at)
    domain.takeovers.extend(takeovers)
    world = ww.World([domain], [])
    for _ in range(addresses):
        domain.addresses.append(len(world.addresses))
        world.addresses.append(ww.Address(0, -400 * DAY))
    world.addresses.extend(ww.Address(-1, -400 * DAY) for _ in range(free))
    return world


def figures(
    world: ww.World, unverified: list[float | None], requests: int = 0
) -> dict[str, float | int | None]:
    return window.figures(world, window.Run("x", unverified, requests), end=END)[0]


# Bookkeeping -----------------------------------------------------------------------


def test_exposure_is_verified_time_while_takeable() -> None:
    # Dropped at day 100, caught at once by a drop-catcher, address unverified at day 130.
    world = world_of(
        (100 * DAY, AVAILABLE),
        (100 * DAY + 1, new_owner(100 * DAY + 1)),
        addresses=2,
        drop_at=100 * DAY,
        takeovers=(100 * DAY + 1,),
    )
    result = figures(world, [130 * DAY, None], requests=7)
    assert result == {
        "exposure_hours": 30 * DAY + (END - 100 * DAY),
        "takeovers_possible": 2,
        "false_unverifications": 0,
        "requests": 7,
        "drop_to_unverify_p50_hours": 30 * DAY,
        "drop_to_unverify_p99_hours": END - 100 * DAY,
    }


def test_unverified_before_the_drop_is_no_exposure_and_a_zero_window() -> None:
    world = world_of((100 * DAY, AVAILABLE), drop_at=100 * DAY)
    result = figures(world, [60 * DAY])
    assert result["exposure_hours"] == 0
    assert result["takeovers_possible"] == 0
    assert result["drop_to_unverify_p50_hours"] == 0


def test_an_auction_is_exposure_from_the_hand_over_without_any_drop() -> None:
    push = 140 * DAY
    world = world_of(
        (100 * DAY, GRACE_PARKED),
        (push, replace(new_owner(push), registered_at=HEALTHY.registered_at)),
        kind="auction",
        takeovers=(push,),
    )
    result = figures(world, [150 * DAY])
    assert result["exposure_hours"] == 10 * DAY
    assert result["takeovers_possible"] == 1
    assert result["drop_to_unverify_p50_hours"] is None  # nothing dropped


def test_false_unverification_needs_a_healthy_domain_held_by_its_owner() -> None:
    world = world_of((100 * DAY, GRACE_PARKED), (130 * DAY, HEALTHY), kind="renewed_late", free=2)
    assert figures(world, [50 * DAY, None, None])["false_unverifications"] == 1
    assert figures(world, [110 * DAY, None, None])["false_unverifications"] == 0  # in the grace
    assert figures(world, [None, 3 * DAY, None])["false_unverifications"] == 1  # a free provider
    _, detail = window.figures(world, window.Run("x", [110 * DAY, None, None], 0), end=END)
    assert detail.owner_kept == 1


def test_timeline_lookup_and_takeable_intervals() -> None:
    world = world_of((10 * DAY, AVAILABLE), (12 * DAY, new_owner(12 * DAY)))
    timeline = world.domains[0].timeline
    assert timeline.at(-5.0) is HEALTHY
    assert timeline.at(10 * DAY).phase == "available"
    assert timeline.at(11 * DAY).phase == "available"
    assert timeline.intervals(END) == [(10 * DAY, 12 * DAY), (12 * DAY, END)]
    with pytest.raises(ValueError, match="before"):
        timeline.add(5 * DAY, HEALTHY)


def test_perturbed_scales_durations_only() -> None:
    p = ww.perturbed(ww.DEFAULT_PARAMS, 0.5)
    assert p["redemption_days"] == ww.DEFAULT_PARAMS["redemption_days"] / 2
    assert p["rereg_first_day_hours"] == ww.DEFAULT_PARAMS["rereg_first_day_hours"] / 2
    assert p["lapse_rate"] == ww.DEFAULT_PARAMS["lapse_rate"]
    assert p["dropcatch_zero_delay_share"] == ww.DEFAULT_PARAMS["dropcatch_zero_delay_share"]


# The policies on hand-made timelines ---------------------------------------------------


def run(world: ww.World, spec: window.PolicySpec, params: dict[str, float] = QUIET) -> window.Run:
    return window.run_policy(world, spec, params, end=END, seed=3)


def test_both_policies_unverify_a_drop_and_lapsewatch_sees_the_reregistration() -> None:
    # The drop and an immediate re-registration fall between two checks: the status
    # looks healthy again; only the registration date tells.
    world = world_of(
        (100 * DAY, AVAILABLE),
        (100 * DAY, new_owner(100 * DAY)),
        drop_at=100 * DAY,
        takeovers=(100 * DAY,),
    )
    warehouse = run(world, window.Warehouse())
    assert warehouse.unverified_at == [None]  # Fastly says "active": nothing to see
    lapsewatch = run(world, window.Lapsewatch())
    caught = lapsewatch.unverified_at[0]
    assert caught is not None
    assert 100 * DAY <= caught <= 130 * DAY  # the first regular check after it
    assert figures(world, lapsewatch.unverified_at)["exposure_hours"] == caught - 100 * DAY


def test_warehouse_unverifies_on_a_deleting_status_within_its_interval() -> None:
    redemption = replace(
        HEALTHY, phase="redemption", rdap_status=("redemption period",), nameservers=()
    )
    world = world_of((50 * DAY, replace(redemption, fastly="undelegated deleting")))
    result = run(world, window.Warehouse())
    caught = result.unverified_at[0]
    assert caught is not None
    assert 50 * DAY <= caught <= 81 * DAY
    assert (caught - 4.25) % DAY == 0  # the unverify task's hour, 04:15


def test_lapsewatch_never_unverifies_when_no_source_answers() -> None:
    world = world_of((10 * DAY, AVAILABLE), drop_at=10 * DAY)
    broken = QUIET | {"rdap_outage_rate": 1.0, "dns_outage_rate": 1.0}
    result = run(world, window.Lapsewatch(), broken)
    assert result.unverified_at == [None]
    assert result.requests > 0
    assert result.requests % (2 * ww.ATTEMPTS) == 0  # every attempt of both sources


def test_warehouse_unverifies_on_fastly_unknown_even_a_healthy_address() -> None:
    world = world_of(kind="renewed", free=3)
    result = run(world, window.Warehouse(), QUIET | {"fastly_unknown_rate": 1.0})
    assert all(u is not None and u <= 31 * DAY for u in result.unverified_at)
    assert figures(world, result.unverified_at)["false_unverifications"] == 4
    # Unverified rows stay in the rotation: every row is checked every 30 days.
    assert 4 * 6 <= result.requests == result.checks <= 4 * 7
    lapsewatch = run(
        world,
        window.Lapsewatch("lw", sources=("rdap", "dns", "fastly")),
        QUIET | {"fastly_unknown_rate": 1.0},
    )
    assert lapsewatch.unverified_at == [None, None, None, None]


def test_warehouse_retries_an_error_after_seven_days() -> None:
    world = world_of(kind="renewed")
    result = run(world, window.Warehouse(), QUIET | {"fastly_error_rate": 1.0})
    assert result.unverified_at == [None]
    # First check within 30 days, then one every 7 days until the end.
    assert (END - 31 * DAY) / (7 * DAY) <= result.requests <= END / (7 * DAY) + 1


def test_a_parked_auction_is_caught_in_the_grace_by_its_name_servers() -> None:
    push = 140 * DAY
    bought = replace(new_owner(push), registered_at=HEALTHY.registered_at, expires_at=665 * DAY)
    world = world_of(
        (100 * DAY, GRACE_PARKED),
        (push, replace(bought, rdap_status=("auto renew period", "client transfer prohibited"))),
        (145 * DAY, bought),
        kind="auction",
        takeovers=(push,),
    )
    assert run(world, window.Warehouse()).unverified_at == [None]
    watched = run(world, window.Lapsewatch()).unverified_at[0]
    assert watched is not None
    assert 100 * DAY <= watched < push


def test_lapsewatch_checks_daily_near_a_known_expiry() -> None:
    # Expires at day 300 (HEALTHY), deleted by the registrar at day 296: inside a window
    # opening 7 days before the expiry (LAPSEWATCH_NEAR_EXPIRY_BEFORE_DAYS=7), checked daily.
    deleted = replace(
        HEALTHY, phase="redemption", rdap_status=("redemption period",), nameservers=()
    )
    world = world_of((296 * DAY, deleted))
    long_world = world_of((296 * DAY, deleted))
    week = window.Lapsewatch(policy=Policy(near_before=timedelta(days=7)))
    result = window.run_policy(long_world, week, QUIET, end=400 * DAY, seed=3)
    caught = result.unverified_at[0]
    assert caught is not None
    assert 296 * DAY <= caught <= 297 * DAY
    assert world.domains[0].timeline.at(caught).phase == "redemption"
    # The default window opens a day before the expiry (day 299): no regular check falls
    # between the deletion and then (seed 3), so the one pulled forward to day 299 sees it.
    result = window.run_policy(
        world_of((296 * DAY, deleted)), window.Lapsewatch(), QUIET, end=400 * DAY, seed=3
    )
    assert result.unverified_at == [299 * DAY]


# The generated world and the command line ---------------------------------------------------


def test_generated_timelines_are_consistent() -> None:
    world = ww.build_world(ww.DEFAULT_PARAMS, domains=3000, seed=2)
    kinds = {d.kind for d in world.domains}
    assert {"renewed", "renewed_late", "dropped", "auction", "early_deletion"} <= kinds
    for domain in world.domains:
        timeline = domain.timeline
        assert timeline.starts == sorted(timeline.starts)
        intervals = timeline.intervals(1e9)
        for taken in domain.takeovers:
            assert any(a <= taken < b for a, b in intervals)
        if domain.kind == "renewed":
            assert not intervals
            assert all(v.owner == 0 and v.phase in ("ok", "autorenew_paid") for v in timeline.views)
        if domain.drop_at is not None:
            assert timeline.at(domain.drop_at).phase in ("available", "new_owner")
            assert domain.drop_at >= 0
    free = sum(a.domain < 0 for a in world.addresses)
    assert free / len(world.addresses) == pytest.approx(
        ww.DEFAULT_PARAMS["free_provider_share"], abs=0.01
    )


def test_dump_params_prints_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert window.main(["--dump-params"]) == 0
    assert json.loads(capsys.readouterr().out) == ww.DEFAULT_PARAMS


def test_json_has_exactly_the_figures_per_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"lapse_rate": 0.5, "redemption_days": 20}))
    out = tmp_path / "w.json"
    window.main(
        [
            *("--domains", "150", "--days", "60", "--tail-days", "20", "--seed", "4"),
            *("--params", str(params), "--json", str(out), "--perturb", "0.5"),
        ]
    )
    data = json.loads(out.read_text())
    assert set(data) == {"params", "policies"}
    assert data["params"]["lapse_rate"] == 0.5
    assert data["params"]["redemption_days"] == 20
    assert {"warehouse", "lapsewatch"} <= set(data["policies"])
    for figures_ in data["policies"].values():
        assert tuple(figures_) == window.FIGURES
    halved = json.loads((tmp_path / "w-x0.5.json").read_text())
    assert halved["params"]["redemption_days"] == 10
    printed = capsys.readouterr().out
    assert "## every duration x0.5" in printed
    assert "## default durations" in printed
    assert "addresses exposed, week by week" in printed


def test_unknown_parameters_are_refused(tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"redemption_dayz": 20}))
    with pytest.raises(SystemExit, match="redemption_dayz"):
        window.main(["--params", str(params)])
