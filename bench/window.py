"""The exposure window: how long an attacker can take an account through a lapsed
domain, under PyPI's schedule (``warehouse``) and lapsewatch's, on the same simulated year.

    python bench/window.py --json bench/window.json            # defaults, seed 1
    python bench/window.py --perturb 0.5 --perturb 1.6         # and every duration x0.5, x1.6
    python bench/window.py --dump-params > p.json; python bench/window.py --params p.json
    python bench/window.py --perturb 0.5 --perturb 1.6 --plot docs/window-exposure.svg

The exit status is 1 when an acceptance criterion of issue #17 fails against
``warehouse`` (PyPI's tasks with their real batch limits).

It drives lapsewatch's real pure code (``verdict.decide`` and ``confirm.settle``,
``mail_hosts.mail_host_domains``, ``cycle.apply``'s next state and affected addresses,
``schedule.next_check`` through it) with a simulated clock and synthetic observations
(``window_world``; the policies in ``window_policies``): no network, no database. Each
policy sees the same world and its own stream of source errors.

Figures per policy (``--json`` writes exactly these keys):

* ``exposure_hours``: hours, summed over addresses, during which the address was still
  verified while its domain could be taken (free after its drop, or held by somebody new
  after a drop-catch, a later re-registration or an expired-domain auction);
* ``takeovers_possible``: new registrations (or auction hand-overs) while an old address
  on the name was still verified, counted per address;
* ``false_unverifications``: addresses unverified while their domain was healthy and
  held by the same registrant;
* ``requests``: status requests sent, retries included (lapsewatch: RDAP, the DNS
  delegation and the MX query, the SOA query confirming an NXDOMAIN, and the checks of
  mail-host domains; warehouse: one Fastly request per email row checked);
* ``drop_to_unverify_p50_hours`` / ``_p99_hours``: time from a domain's drop to the
  unverification of each of its addresses (0 when unverified before the drop; an address
  never unverified counts the time to the end of the run, a lower bound).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import window_plot
import window_world as ww
from window_policies import (
    WAREHOUSE_UNVERIFY,
    Lapsewatch,
    LapsewatchRun,
    PolicySpec,
    Run,
    Warehouse,
    default_policies,
    run_lapsewatch,
    run_policy,
    run_warehouse,
)

__all__ = [
    "FIGURES",
    "WAREHOUSE_UNVERIFY",
    "Lapsewatch",
    "LapsewatchRun",
    "PolicySpec",
    "Run",
    "Warehouse",
    "default_policies",
    "figures",
    "main",
    "run_lapsewatch",
    "run_policy",
    "run_warehouse",
    "simulate",
]

FIGURES = (
    "exposure_hours",
    "takeovers_possible",
    "false_unverifications",
    "requests",
    "drop_to_unverify_p50_hours",
    "drop_to_unverify_p99_hours",
)
WAREHOUSES = ("warehouse", "warehouse_10k")
"""The PyPI policies the criteria are checked against."""


def _overlap(intervals: Sequence[tuple[float, float]], start: float, stop: float) -> float:
    return sum(max(0.0, min(b, stop) - max(a, start)) for a, b in intervals)


def _merged(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _mail_domains_used(
    world: ww.World, domain: ww.Domain, end: float
) -> list[tuple[float, float, ww.Domain]]:
    """``(start, stop, mail-host domain)``: while the domain's MX pointed at a pool
    domain that lapses in this world."""
    timeline, out = domain.timeline, []
    for i, view in enumerate(timeline.views):
        start = timeline.starts[i]
        stop = timeline.starts[i + 1] if i + 1 < len(timeline.starts) else end
        for name in sorted({m for m in map(ww.mail_domain_of, view.mail_hosts) if m}):
            mail = world.mail_domains.get(name)
            if mail is not None and mail.kind != "mail_host" and start < stop:
                out.append((start, stop, mail))
    return out


def _exposed(
    world: ww.World, domain: ww.Domain, end: float
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], list[ww.Domain]]:
    """When the domain could be taken (its own intervals), and when its mail could: its
    mail hosts' domain taken while its MX pointed there; and those domains."""
    own = domain.timeline.intervals(end) if domain.kind != "renewed" else []
    via: list[tuple[float, float]] = []
    mails: dict[str, ww.Domain] = {}
    for start, stop, mail in _mail_domains_used(world, domain, end):
        mails[mail.name] = mail
        for a, b in mail.timeline.intervals(end):
            if max(a, start) < min(b, stop):
                via.append((max(a, start), min(b, stop)))
    return own, via, list(mails.values())


def _takeovers(world: ww.World, domain: ww.Domain, end: float) -> list[float]:
    """When somebody new came to hold the domain, or a mail-host domain it used then."""
    found = list(domain.takeovers)
    for start, stop, mail in _mail_domains_used(world, domain, end):
        found += [t for t in mail.takeovers if start <= t < stop]
    return sorted(set(found))


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100.0 * len(ordered)) - 1, 0)]


@dataclass
class Detail:
    """What the text report adds to the figures: where the exposure comes from."""

    windows: list[float] = field(default_factory=list)
    """Exposure hours of each exposed address."""
    exposure_by_kind: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    takeovers_by_kind: Counter[str] = field(default_factory=Counter)
    exposure_by_day: list[float] = field(default_factory=list)
    """Exposure hours falling in each day of the run (addresses exposed that day x 24)."""
    owner_kept: int = 0
    """Addresses unverified whose registrant kept the domain (late renewal): correct,
    since the domain was in an expiry phase, but a cost to the owner."""
    false_after_dns_move: int = 0
    """False unverifications of addresses whose owner had moved DNS hosting before."""
    censored: int = 0
    """Addresses of dropped domains still verified at the end of the run."""
    requests_by_kind: Counter[str] = field(default_factory=Counter)
    checks: int = 0


def _add_by_day(days: list[float], start: float, stop: float) -> None:
    day = max(int(start // 24.0), 0)
    while day < len(days) and day * 24.0 < stop:
        days[day] += max(0.0, min(stop, (day + 1) * 24.0) - max(start, day * 24.0))
        day += 1


def figures(
    world: ww.World, run: Run, *, end: float
) -> tuple[dict[str, float | int | None], Detail]:
    """The issue's figures for one run, and the breakdown behind them."""
    exposure = 0.0
    takeovers, false = 0, 0
    windows: list[float] = []
    detail = Detail(
        exposure_by_day=[0.0] * math.ceil(end / 24.0),
        requests_by_kind=run.requests_by_kind,
        checks=run.checks,
    )
    exposed = {i: _exposed(world, d, end) for i, d in enumerate(world.domains)}
    for a, address in enumerate(world.addresses):
        gone = run.unverified_at[a]
        if address.domain < 0:
            false += gone is not None  # a free provider is always healthy
            continue
        domain = world.domains[address.domain]
        own, via, mails = exposed[address.domain]
        if gone is not None:
            mail_ok = all(m.timeline.at(gone).healthy for m in mails)
            if domain.timeline.at(gone).healthy and mail_ok:
                false += 1
                moved = domain.ns_moved_at
                detail.false_after_dns_move += moved is not None and moved <= gone
            elif domain.kind in ("renewed", "renewed_late") and mail_ok:
                detail.owner_kept += 1
        if not own and not via:
            continue
        until = end if gone is None else gone
        intervals = _merged([*own, *via])
        hours = _overlap(intervals, 0.0, until)
        kind = f"{domain.tld}:{domain.kind}"
        if _overlap(own, 0.0, until) <= 0 and mails:
            kind = f"mail_host:{mails[0].kind}"
        if hours > 0:
            exposure += hours
            detail.windows.append(hours)
            detail.exposure_by_kind[kind] += hours
            for a_, b_ in intervals:
                if a_ < until:
                    _add_by_day(detail.exposure_by_day, max(a_, 0.0), min(b_, until))
        for taken in _takeovers(world, domain, end) if mails else domain.takeovers:
            if 0.0 <= taken < until and taken < end:
                takeovers += 1
                detail.takeovers_by_kind[kind] += 1
        if domain.drop_at is not None and 0.0 <= domain.drop_at < end:
            windows.append(max(until - domain.drop_at, 0.0))
            detail.censored += gone is None
    p50, p99 = _percentile(windows, 50), _percentile(windows, 99)
    result: dict[str, float | int | None] = {
        "exposure_hours": round(exposure, 1),
        "takeovers_possible": takeovers,
        "false_unverifications": false,
        "requests": run.requests,
        "drop_to_unverify_p50_hours": None if p50 is None else round(p50, 1),
        "drop_to_unverify_p99_hours": None if p99 is None else round(p99, 1),
    }
    return result, detail


@dataclass
class Simulation:
    params: dict[str, float]
    results: dict[str, dict[str, float | int | None]]
    details: dict[str, Detail]
    world: ww.World
    factor: float = 1.0


def simulate(
    params: Mapping[str, float],
    *,
    domains: int = 10_000,
    seed: int = 1,
    days: float = 365.0,
    tail_days: float = 120.0,
    policies: Sequence[PolicySpec] | None = None,
    factor: float = 1.0,
) -> Simulation:
    """Build one world (lapses fall in the first ``days``; the run continues
    ``tail_days`` more so that late drops are followed) and run every policy on it."""
    world = ww.build_world(params, domains=domains, seed=seed, year_hours=days * 24.0)
    end = (days + tail_days) * 24.0
    results: dict[str, dict[str, float | int | None]] = {}
    details: dict[str, Detail] = {}
    for n, spec in enumerate(policies if policies is not None else default_policies()):
        run = run_policy(world, spec, params, end=end, seed=seed * 1000 + n)
        results[spec.name], details[spec.name] = figures(world, run, end=end)
    return Simulation(dict(params), results, details, world, factor)


# Report --------------------------------------------------------------------------------


def _cell(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def table(results: Mapping[str, Mapping[str, float | int | None]]) -> str:
    names = list(results)
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in FIGURES:
        lines.append(f"| {key} | " + " | ".join(_cell(results[n][key]) for n in names) + " |")
    return "\n".join(lines)


def criteria(
    results: Mapping[str, Mapping[str, float | int | None]], against: str = "warehouse"
) -> list[tuple[str, bool]]:
    """The issue's acceptance criteria, lapsewatch (defaults) against ``against``."""
    w, lw = results[against], results["lapsewatch"]

    def num(v: float | int | None) -> float:
        return 0.0 if v is None else float(v)

    return [
        (
            f"exposure_hours <= 10% of {against}",
            num(lw["exposure_hours"]) <= 0.1 * num(w["exposure_hours"]),
        ),
        ("0 false_unverifications", num(lw["false_unverifications"]) == 0),
        (f"requests <= {against}", num(lw["requests"]) <= num(w["requests"])),
    ]


_KINDS = ("rdap", "dns", "mx", "dns_soa", "mail_host", "fastly")


def request_table(details: Mapping[str, Detail]) -> str:
    """Requests per kind and checks, per policy."""
    lines = [
        "| policy | checks | " + " | ".join(_KINDS) + " | total |",
        "|---" * (len(_KINDS) + 3) + "|",
    ]
    for name, d in details.items():
        counts = d.requests_by_kind
        cells = " | ".join(f"{counts[k]:,}" for k in _KINDS)
        lines.append(f"| {name} | {d.checks:,} | {cells} | {sum(counts.values()):,} |")
    return "\n".join(lines)


def report(sim: Simulation, factor: float) -> str:
    title = "default durations" if factor == 1 else f"every duration x{factor:g}"
    lines = [f"## {title}", "", table(sim.results), ""]
    for against in WAREHOUSES:
        if against in sim.results and "lapsewatch" in sim.results:
            for text, holds in criteria(sim.results, against):
                lines.append(f"- lapsewatch {text}: {'holds' if holds else 'FAILS'}")
    lines += ["", "requests by kind:", "", request_table(sim.details)]
    kinds = Counter(f"{d.tld}:{d.kind}" for d in sim.world.domains)
    lapsing = (m for m in sim.world.mail_domains.values() if m.kind != "mail_host")
    kinds.update(f"mail_host:{m.kind}" for m in lapsing)  # exposure through mail hosts
    lines += ["", "exposure hours by lifecycle (domains of that kind):", ""]
    names = list(sim.details)
    lines.append("| lifecycle | domains | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 2) + "|")
    for kind in sorted(k for k in kinds if not k.endswith(":renewed")):
        cells = " | ".join(
            f"{d.exposure_by_kind[kind]:,.0f} ({d.takeovers_by_kind[kind]})"
            for d in sim.details.values()
        )
        lines.append(f"| {kind} | {kinds[kind]} | {cells} |")
    moved = sum(d.ns_moved_at is not None for d in sim.world.domains)
    lines += [
        "",
        "(takeovers possible in brackets)",
        "",
        "owners who kept their domain but were unverified during its expiry phase: "
        + ", ".join(f"{n} {d.owner_kept}" for n, d in sim.details.items()),
        f"false unverifications after the owner moved DNS hosting ({moved} domains moved): "
        + ", ".join(f"{n} {d.false_after_dns_move}" for n, d in sim.details.items()),
        "dropped-domain addresses still verified at the end: "
        + ", ".join(f"{n} {d.censored}" for n, d in sim.details.items()),
        "",
        "```",
        window_plot.histogram({n: d.windows for n, d in sim.details.items()}),
        "```",
    ]
    return "\n".join(lines)


def _load_params(path: str | None) -> dict[str, float]:
    params = dict(ww.DEFAULT_PARAMS)
    if path is None:
        return params
    given = json.loads(Path(path).read_text())
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise SystemExit(f"unknown parameters in {path}: {', '.join(unknown)}")
    params.update({k: float(v) for k, v in given.items()})
    return params


def _json_path(path: str, factor: float, first: bool) -> Path:
    """``FILE`` for the first run; ``FILE`` with ``-x0.5`` before the suffix for the others."""
    p = Path(path)
    return p if first else p.with_name(f"{p.stem}-x{factor:g}{p.suffix}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="write {params, policies} here")
    parser.add_argument("--params", metavar="FILE", help="JSON replacing lifecycle parameters")
    parser.add_argument("--dump-params", action="store_true", help="print the defaults as JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--domains", type=int, default=10_000, help="custom email domains")
    parser.add_argument("--days", type=float, default=365.0, help="days over which lapses fall")
    parser.add_argument("--tail-days", type=float, default=120.0, help="days followed after")
    parser.add_argument(
        "--perturb",
        type=float,
        action="append",
        metavar="FACTOR",
        help="also run with every duration times FACTOR (repeatable)",
    )
    parser.add_argument(
        "--plot", metavar="FILE.svg", help="write exposure over time and the windows as SVG"
    )
    parser.add_argument(
        "--all-variants",
        action="store_true",
        help="run every variant with perturbed durations too (default: the defaults only)",
    )
    args = parser.parse_args(argv)
    if args.dump_params:
        print(json.dumps(ww.DEFAULT_PARAMS, indent=2))
        return 0
    base = _load_params(args.params)
    factors = [1.0, *(args.perturb or [])]
    failed = False
    sims: list[Simulation] = []
    for n, factor in enumerate(factors):
        params = ww.perturbed(base, factor)
        sim = simulate(
            params,
            domains=args.domains,
            seed=args.seed,
            days=args.days,
            tail_days=args.tail_days,
            policies=default_policies(variants=n == 0 or args.all_variants),
            factor=factor,
        )
        print(report(sim, factor), end="\n\n", flush=True)
        failed |= not all(holds for _, holds in criteria(sim.results))
        if args.json:
            out = {"params": sim.params, "policies": sim.results}
            _json_path(args.json, factor, n == 0).write_text(json.dumps(out, indent=2) + "\n")
        sims.append(sim)
    panels = [
        window_plot.Panel(
            f"durations x{sim.factor:g}",
            {name: sim.details[name].exposure_by_day for name in _PLOTTED if name in sim.details},
            {name: sim.details[name].windows for name in _PLOTTED if name in sim.details},
        )
        for sim in sims
    ]
    print("```\n" + window_plot.text_plot(panels) + "\n```")
    if args.plot:
        Path(args.plot).write_text(window_plot.svg(panels))
    return 1 if failed else 0


_PLOTTED = ("warehouse", "warehouse_10k", "lapsewatch")


if __name__ == "__main__":
    raise SystemExit(main())
