"""bench/window.py: what each check really sends (MX, SOA, mail-host domains), the
product's confirmation rule, owners moving DNS hosting, PyPI's two tasks and their
limits, and the plots, on small hand-made timelines."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

from lapsewatch.mail_hosts import mail_providers
from lapsewatch.verdict import Verdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import window
import window_plot
import window_world as ww
from tests.test_window import AVAILABLE, DAY, HEALTHY, QUIET

GOOGLE = ("aspmx.l.google.com", "alt1.aspmx.l.google.com")
THIRD_PARTY = ("mx1.mailhost3.net", "mx2.mailhost3.net")
WITH_GOOGLE = replace(HEALTHY, mail_hosts=GOOGLE)
WITH_THIRD_PARTY = replace(HEALTHY, mail_hosts=THIRD_PARTY)


def domain(name: str, *segments: tuple[float, ww.View], first: ww.View = WITH_GOOGLE) -> ww.Domain:
    timeline = ww.Timeline()
    timeline.add(-1e12, first)
    for start, view in segments:
        timeline.add(start, view)
    return ww.Domain(name, "gtld", "renewed", timeline)


def world(*domains: ww.Domain) -> ww.World:
    """Each domain with one address verified long before the run."""
    built = ww.World([], [])
    for i, d in enumerate(domains):
        d.addresses.append(len(built.addresses))
        built.addresses.append(ww.Address(i, -400 * DAY))
        built.domains.append(d)
    return built


def cycle(
    w: ww.World,
    spec: window.Lapsewatch | None = None,
    params: dict[str, float] = QUIET,
    *,
    read_mx: bool = True,
) -> window.LapsewatchRun:
    """The run after its steady state; ``read_mx``: every domain's MX never read, so its
    next check reads it (the steady state's last read falls anywhere in the interval)."""
    sim = window.LapsewatchRun(w, spec or window.Lapsewatch(), params, seed=3)
    if read_mx:
        for state in sim.states:
            state.known = replace(state.known, mail_hosts_read_at=None)
    return sim


# What one check sends --------------------------------------------------------------------


def test_a_delegated_domain_costs_rdap_ns_and_mx() -> None:
    sim = cycle(world(domain("a.com")))
    assert sim.kinds == Counter()  # the steady state before the run costs nothing
    assert sim.check(0, 10 * DAY) is not None
    assert sim.kinds == Counter(rdap=1, dns=1, mx=1)
    assert sim.checks == 1


def test_a_domain_hosting_its_own_mail_checks_no_mail_host() -> None:
    sim = cycle(world(domain("a.com", first=replace(HEALTHY, mail_hosts=("mail.a.com",)))))
    sim.check(0, 10 * DAY)
    assert sim.kinds == Counter(rdap=1, dns=1, mx=1)


def test_a_third_party_mail_host_domain_is_checked_once_a_week() -> None:
    sim = cycle(
        world(domain("a.com", first=WITH_THIRD_PARTY), domain("b.com", first=WITH_THIRD_PARTY))
    )
    sim.check(0, 10 * DAY)
    sim.check(1, 10 * DAY)  # same run: mailhost3.net's verdict is shared
    assert sim.kinds == Counter(rdap=2, dns=2, mx=2, mail_host=2)  # its RDAP and NS: no MX
    sim.check(0, 10 * DAY + 1)  # the next run: its kept verdict stands (for 7 days)
    assert sim.kinds["mail_host"] == 2
    assert sim.kinds["mx"] == 2  # a.com's MX was read an hour ago
    sim.check(0, 17 * DAY - 1)  # the last run before a week is up: it still stands
    assert sim.kinds["mail_host"] == 2
    sim.check(0, 17 * DAY)  # a week on: asked again
    assert sim.kinds["mail_host"] == 4
    assert sim.unverified == [None, None]


def test_an_nxdomain_costs_one_soa_query_per_zone_and_cycle_run() -> None:
    dropped = ((5 * DAY, AVAILABLE),)
    sim = cycle(
        world(domain("a.com", *dropped), domain("b.com", *dropped), domain("c.com", *dropped))
    )
    sim.check(0, 10 * DAY)
    sim.check(1, 10 * DAY)
    assert sim.kinds == Counter(rdap=2, dns=2, dns_soa=1)  # no MX without a delegation
    sim.check(2, 10 * DAY + 1)
    assert sim.kinds["dns_soa"] == 2
    assert sim.unverified == [10 * DAY, 10 * DAY, 10 * DAY + 1]  # RDAP's 404 acts at once


def test_requests_add_up_over_a_run() -> None:
    result = window.run_policy(
        world(domain("a.com", first=WITH_THIRD_PARTY)),
        window.Lapsewatch(),
        QUIET,
        end=200 * DAY,
        seed=3,
    )
    kinds = result.requests_by_kind
    assert result.requests == sum(kinds.values())
    assert kinds["rdap"] == kinds["dns"] == result.checks
    # Checked every 30 days, read every 90: the MX at every third check after the
    # steady state's read.
    assert kinds["mx"] == result.checks // 3
    assert kinds["mail_host"] == 2 * result.checks  # RDAP and NS of its one mail-host domain


def test_the_mx_is_read_once_in_the_interval() -> None:
    sim = cycle(world(domain("a.com")), read_mx=False)
    sim.states[0].known = replace(sim.states[0].known, mail_hosts_read_at=ww.when(0.0))
    for day in (10, 30, 89):
        sim.check(0, day * DAY)
    assert sim.kinds["mx"] == 0
    sim.check(0, 90 * DAY)
    sim.check(0, 91 * DAY)
    assert sim.kinds == Counter(rdap=5, dns=5, mx=1)
    assert sim.states[0].known.mail_hosts_read_at == ww.when(90 * DAY)


def test_the_stored_mail_hosts_are_checked_when_the_mx_is_not_read() -> None:
    sim = cycle(world(domain("a.com", first=WITH_THIRD_PARTY)), read_mx=False)
    sim.states[0].known = replace(sim.states[0].known, mail_hosts_read_at=ww.when(0.0))
    sim.check(0, 10 * DAY)
    assert sim.kinds == Counter(rdap=1, dns=1, mail_host=2)


# The product's confirmation rule (confirm.settle) -----------------------------------------


def test_a_thin_danger_acts_only_when_its_confirming_check_says_the_same() -> None:
    # RDAP down: the drop rests on the DNS alone.
    params = QUIET | {"rdap_outage_rate": 1.0}
    sim = cycle(world(domain("a.com", (5 * DAY, AVAILABLE))), params=params)
    assert sim.check(0, 10 * DAY) == 10 * DAY + 1  # Policy.confirm: 60 minutes
    assert sim.unverified == [None]
    pending = sim.states[0].pending
    assert pending is not None
    assert pending.verdict is Verdict.AVAILABLE
    assert sim.check(0, 10 * DAY + 1) is None  # confirmed: nothing verified is left
    assert sim.unverified == [10 * DAY + 1]
    assert sim.states[0].pending is None


def test_answers_that_flip_are_never_acted_on() -> None:
    # The owner's own name parked for an hour: "for sale" on the DNS alone, then healthy.
    parked = replace(WITH_GOOGLE, nameservers=("ns1.sedoparking.com",))
    sim = cycle(world(domain("a.com", (10 * DAY, parked), (10 * DAY + 0.5, WITH_GOOGLE))))
    assert sim.check(0, 10 * DAY) == 10 * DAY + 1
    assert sim.check(0, 10 * DAY + 1) is not None
    assert sim.unverified == [None]
    assert sim.states[0].pending is None
    assert sim.states[0].known.last_verdict == Verdict.UNKNOWN.value  # retried with backoff


# Owners moving DNS hosting --------------------------------------------------------------

PAID = replace(
    WITH_GOOGLE, phase="autorenew_paid", rdap_status=("auto renew period",), expires_at=665 * DAY
)
"""The registry's auto-renew at the expiry (day 300), paid for by the owner."""
END = 400 * DAY


def renewed_by_auto_renew(move_at: float | None) -> ww.World:
    d = domain("a.com", (300 * DAY, PAID), (345 * DAY, replace(WITH_GOOGLE, expires_at=665 * DAY)))
    if move_at is not None:
        ww.move_dns(d, move_at)
    return world(d)


def test_move_dns_replaces_the_owners_name_servers_from_then_on() -> None:
    w = renewed_by_auto_renew(310 * DAY)
    timeline = w.domains[0].timeline
    assert timeline.at(309 * DAY).nameservers == ww.OWNER_NS
    assert timeline.at(311 * DAY).nameservers == ww.MOVED_NS
    assert timeline.at(311 * DAY).phase == "autorenew_paid"
    assert timeline.at(350 * DAY).nameservers == ww.MOVED_NS
    assert timeline.at(350 * DAY).mail_hosts == GOOGLE  # the zone moves with its records
    assert w.domains[0].ns_moved_at == 310 * DAY
    held = domain("b.com", (10 * DAY, replace(HEALTHY, phase="grace", nameservers=())))
    ww.move_dns(held, 20 * DAY)  # not healthy then: the owner does not move anything
    assert held.ns_moved_at is None
    assert held.timeline.at(30 * DAY).nameservers == ()


def test_a_dns_move_in_the_auto_renew_grace_that_keeps_the_mail_hosts_is_left_alone() -> None:
    w = renewed_by_auto_renew(310 * DAY)
    run = window.run_policy(w, window.Lapsewatch(), QUIET, end=END, seed=3)
    assert run.unverified_at == [None]
    result, detail = window.figures(w, run, end=END)
    assert result["false_unverifications"] == 0
    assert detail.false_after_dns_move == 0


def _paid_renewal_with_a_dns_move(mail_hosts: tuple[str, ...]) -> ww.World:
    owner = replace(HEALTHY, mail_hosts=mail_hosts)
    paid = replace(
        owner, phase="autorenew_paid", rdap_status=PAID.rdap_status, expires_at=665 * DAY
    )
    d = domain(
        "a.com", (300 * DAY, paid), (345 * DAY, replace(owner, expires_at=665 * DAY)), first=owner
    )
    ww.move_dns(d, 310 * DAY)
    return world(d)


def test_a_dns_move_in_the_grace_by_an_owner_without_mx_is_left_alone() -> None:
    """No MX: the DNS source reports the domain's address (the implicit MX), and the
    zone moves with it, so the rule sees the same mail host."""
    w = _paid_renewal_with_a_dns_move(("[203.0.113.7]",))
    run = window.run_policy(w, window.Lapsewatch(), QUIET, end=END, seed=3)
    assert run.unverified_at == [None]
    result, _ = window.figures(w, run, end=END)
    assert result["false_unverifications"] == 0


def test_a_dns_move_in_the_grace_by_an_owner_with_no_mail_host_is_still_unverified() -> None:
    """The residual of the rule (docs/verdicts.md): no MX and no address, nothing to
    compare, so the name servers alone decide."""
    run = window.run_policy(
        _paid_renewal_with_a_dns_move(()), window.Lapsewatch(), QUIET, end=END, seed=3
    )
    caught = run.unverified_at[0]
    assert caught is not None
    # The grace is checked every 3 days from its first day (300): the move at day 310
    # is seen at the check of day 312.
    assert caught == 312 * DAY


def test_the_checks_of_a_grace_read_the_mx_once_per_interval() -> None:
    """A paying owner's 45 days of ``auto renew period`` are checked every 3 days; the
    MX read again unchanged in the grace counts as read, so it is not read at every
    check."""
    w = renewed_by_auto_renew(None)
    run = window.run_policy(w, window.Lapsewatch(), QUIET, end=END, seed=3)
    assert run.unverified_at == [None]
    grace_checks = 45 // 3
    assert run.checks > grace_checks
    # Read 90, 180 and 270 days after the steady state's read (before the window opens
    # at day 299), none in the grace (its name servers did not change), and once more
    # at the first check 90 days after the last read (day 345 or 375).
    assert run.requests_by_kind["mx"] == 4


def test_a_dns_move_outside_the_grace_is_learned_not_acted_on() -> None:
    w = renewed_by_auto_renew(100 * DAY)
    run = window.run_policy(w, window.Lapsewatch(), QUIET, end=END, seed=3)
    assert run.unverified_at == [None]


def test_the_grace_rule_waits_when_the_dns_does_not_answer() -> None:
    """No DNS answer at all (our resolver may be down): ``unknown``, retried with
    backoff, never acted on. (A zone that answers but not for its mail hosts is thin
    and confirmed: tests/test_verdict.py.)"""
    w = renewed_by_auto_renew(310 * DAY)
    sim = window.LapsewatchRun(w, window.Lapsewatch(), QUIET | {"dns_error_rate": 1.0}, seed=3)
    assert sim.check(0, 320 * DAY) == 320 * DAY + 1  # unknown: retried in an hour
    assert sim.check(0, 320 * DAY + 1) == 320 * DAY + 3  # and again two hours later
    assert sim.unverified == [None]
    assert sim.states[0].known.last_verdict == Verdict.UNKNOWN.value


def test_a_move_whose_mail_hosts_are_read_at_the_confirming_check_is_let_off() -> None:
    w = renewed_by_auto_renew(310 * DAY)
    sim = window.LapsewatchRun(w, window.Lapsewatch(), QUIET | {"dns_error_rate": 1.0}, seed=3)
    assert sim.check(0, 320 * DAY) == 320 * DAY + 1
    sim.params = QUIET  # the DNS answers again
    assert sim.check(0, 320 * DAY + 1) is not None
    assert sim.unverified == [None]


def test_the_grace_rule_still_catches_a_parked_auction() -> None:
    grace = replace(PAID, phase="grace", nameservers=("ns1.expired.registrar.example",))
    parked = replace(grace, mail_hosts=("[198.51.100.1]",))  # no MX: the parking page's address
    w = world(domain("a.com", (300 * DAY, PAID), (303 * DAY, parked)))
    run = window.run_policy(w, window.Lapsewatch(), QUIET, end=END, seed=3)
    # The grace is checked every 3 days from its first day (300): the check of day 303
    # sees the parking at once.
    assert run.unverified_at == [303 * DAY]


# PyPI's two tasks ----------------------------------------------------------------------


def free_addresses(count: int) -> ww.World:
    return ww.World([], [ww.Address(-1, -400 * DAY) for _ in range(count)])


def test_warehouse_checks_at_most_its_batch_limit_a_day() -> None:
    run = window.run_policy(
        free_addresses(5),
        window.Warehouse(interval_days=0.0, check_limit=2),
        QUIET,
        end=10 * DAY,
        seed=3,
    )
    assert run.requests == run.checks == 20  # 2 a day at 04:00, every row always due


def test_warehouse_unverifies_at_04_15_at_most_its_limit_a_day() -> None:
    expiring = replace(HEALTHY, phase="grace", fastly="expiring")
    w = world(domain("a.com", (-1.0, expiring)), domain("b.com", (-1.0, expiring)))
    spec = window.Warehouse(interval_days=0.0, unverify_limit=1)
    run = window.run_policy(w, spec, QUIET, end=5 * DAY, seed=3)
    assert sorted(u for u in run.unverified_at if u is not None) == [4.25, DAY + 4.25]


def test_warehouse_unverifies_on_the_status_stored_at_its_check() -> None:
    # Expiring at the 04:00 check, renewed at 04:10: the 04:15 task still unverifies.
    expiring = replace(HEALTHY, phase="grace", fastly="expiring")
    w = world(domain("a.com", (-1.0, expiring), (4 + 1 / 6, HEALTHY)))
    run = window.run_policy(w, window.Warehouse(interval_days=0.0), QUIET, end=2 * DAY, seed=3)
    assert run.unverified_at == [4.25]
    assert window.figures(w, run, end=2 * DAY)[0]["false_unverifications"] == 1


# The world and the plots ---------------------------------------------------------------


def test_mail_hosts_of_the_world_are_what_the_product_sees() -> None:
    providers = mail_providers()
    for hosts in ww.PROVIDER_MX:
        assert all(providers.covers(h.format(label="a-com")) for h in hosts)
    generated = ww.build_world(ww.DEFAULT_PARAMS, domains=2000, seed=2)
    third = [
        h
        for d in generated.domains
        for h in d.timeline.views[0].mail_hosts
        if h.endswith(".net") and "mailhost" in h
    ]
    assert third
    assert not any(providers.covers(h) for h in third)
    moved = [d for d in generated.domains if d.ns_moved_at is not None]
    assert 0.05 < len(moved) / len(generated.domains) < 0.15  # ns_change_rate 0.10
    for d in moved:
        assert d.ns_moved_at is not None
        assert d.timeline.at(d.ns_moved_at).nameservers == ww.MOVED_NS


def test_plots_show_every_policy_of_every_panel() -> None:
    panels = [
        window_plot.Panel(
            title,
            {"warehouse": [0.0] * 10 + [48.0] * 4, "lapsewatch": [0.0] * 14},
            {"warehouse": [30.0, 200.0], "lapsewatch": []},
        )
        for title in ("durations x1", "durations x0.5")
    ]
    text = window_plot.text_plot(panels)
    assert text.count("warehouse") >= 4
    assert "durations x0.5" in text
    assert "192 h" in text  # 4 days of 48 exposure hours
    picture = window_plot.svg(panels)
    assert picture.startswith("<svg")
    assert picture.count("<polyline") == 4
    assert "durations x0.5" in picture


# Mail-host domains that lapse --------------------------------------------------------------


def lapsing_mail_host(*segments: tuple[float, ww.View]) -> ww.Domain:
    """mailhost3.net (the pool domain THIRD_PARTY's hosts sit on), lapsing."""
    mail = domain(
        "mailhost3.net", *segments, first=ww.healthy_mail_domain("mailhost3.net").timeline.views[0]
    )
    mail.kind = "dropped"
    return mail


def test_exposure_through_a_lapsed_mail_host_is_counted_exactly() -> None:
    """a.com is healthy all year, but its mail goes to mailhost3.net, which is free to
    register from day 100: its address is exposed from then until it is unverified,
    and an unverification while the mail host's domain is not healthy is not false."""
    held = replace(AVAILABLE, phase="redemption", owner=0)
    w = world(domain("a.com", first=WITH_THIRD_PARTY))
    w.mail_domains["mailhost3.net"] = lapsing_mail_host((60 * DAY, held), (100 * DAY, AVAILABLE))
    run = window.Run("hand", [110 * DAY], 0)
    result, detail = window.figures(w, run, end=200 * DAY)
    assert result["exposure_hours"] == 10 * DAY
    assert result["false_unverifications"] == 0  # its mail host's domain was lapsing
    assert detail.exposure_by_kind == {"mail_host:dropped": 10 * DAY}
    early = window.Run("hand", [30 * DAY], 0)  # while all was healthy: false
    assert window.figures(w, early, end=200 * DAY)[0]["false_unverifications"] == 1


def test_a_mail_host_domain_taken_counts_a_takeover_while_its_mx_points_there() -> None:
    taken = replace(AVAILABLE, phase="new_owner", owner=2, rdap_found=True)
    mail = lapsing_mail_host((100 * DAY, taken))
    mail.takeovers.append(100 * DAY)
    moved_away = replace(HEALTHY, mail_hosts=GOOGLE)  # a.com leaves it at day 50
    w = world(
        domain("a.com", first=WITH_THIRD_PARTY),
        domain("b.com", (50 * DAY, moved_away), first=WITH_THIRD_PARTY),
    )
    w.mail_domains["mailhost3.net"] = mail
    result, _ = window.figures(w, window.Run("hand", [None, None], 0), end=200 * DAY)
    assert result["takeovers_possible"] == 1  # a.com's only
    assert result["exposure_hours"] == 100 * DAY


def test_lapsewatch_unverifies_behind_a_mail_host_domain_put_on_hold() -> None:
    """The mail host's domain expires at day 100 (gTLD: auto-renew grace) and its
    registrar holds it on day 102: the domain behind it, checked every 30 days, is
    ``mail_host_lapsed`` at its first check after the hold (a kept verdict stands a
    week at most, 3 days in the grace), long before the mail host's domain drops at
    day 140."""
    grace = replace(
        ww.healthy_mail_domain("mailhost3.net").timeline.views[0],
        phase="grace",
        rdap_status=("auto renew period",),
        expires_at=465 * DAY,
    )
    hold = replace(grace, rdap_status=("client hold", "auto renew period"), nameservers=())
    w = world(domain("a.com", first=WITH_THIRD_PARTY))
    mail = lapsing_mail_host((100 * DAY, grace), (102 * DAY, hold), (140 * DAY, AVAILABLE))
    mail.timeline.views[0] = replace(mail.timeline.views[0], expires_at=100 * DAY)
    w.mail_domains["mailhost3.net"] = mail
    run = window.run_policy(w, window.Lapsewatch(), QUIET, end=200 * DAY, seed=3)
    gone = run.unverified_at[0]
    assert gone is not None
    assert 102 * DAY <= gone < 140 * DAY
    assert window.figures(w, run, end=200 * DAY)[0]["exposure_hours"] == 0
