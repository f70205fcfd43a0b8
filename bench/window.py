"""The exposure window: how long an attacker can take an account through a lapsed
domain, under PyPI's schedule (``warehouse``) and lapsewatch's, on the same simulated year.

    python bench/window.py --json bench/window.json            # defaults, seed 1
    python bench/window.py --perturb 0.5 --perturb 1.6         # and every duration x0.5, x1.6
    python bench/window.py --dump-params > p.json; python bench/window.py --params p.json

It drives lapsewatch's real pure code (``verdict.decide``, ``schedule.next_check``)
with a simulated clock and synthetic observations (``window_world``): no network, no
database. Each policy sees the same world and its own stream of source errors.

Figures per policy (``--json`` writes exactly these keys):

* ``exposure_hours``: hours, summed over addresses, during which the address was still
  verified while its domain could be taken (free after its drop, or held by somebody new
  after a drop-catch, a later re-registration or an expired-domain auction);
* ``takeovers_possible``: new registrations (or auction hand-overs) while an old address
  on the name was still verified, counted per address;
* ``false_unverifications``: addresses unverified while their domain was healthy and
  held by the same registrant;
* ``requests``: status requests sent, retries included;
* ``drop_to_unverify_p50_hours`` / ``_p99_hours``: time from a domain's drop to the
  unverification of each of its addresses (0 when unverified before the drop; an address
  never unverified counts the time to the end of the run, a lower bound).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import window_world as ww
from lapsewatch.schedule import Policy, next_check
from lapsewatch.sources.interface import Observation
from lapsewatch.verdict import (
    Decision,
    Verdict,
    decide,
    healthy_nameservers,
    in_auto_renew_grace,
)

__all__ = [
    "FIGURES",
    "Lapsewatch",
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
WAREHOUSE_UNVERIFY = frozenset({"undelegated", "inactive", "expiring", "deleting", "unknown"})
"""Fastly tokens on which PyPI's task unverifies an address."""


@dataclass(frozen=True)
class Warehouse:
    """PyPI's task: per address, due 30 days after its last check, a daily job with a
    batch limit, one Fastly request each, retried ~7 days after an error."""

    name: str = "warehouse"
    interval_days: float = 30.0
    retry_days: float = 7.0
    run_hour: float = 3.0
    batch_limit: int | None = None
    """Addresses per daily run; ``None``: twice the steady-state load (never binding)."""


@dataclass(frozen=True)
class Lapsewatch:
    """lapsewatch's cycle, run every ``run_every_hours`` (cron), through the real schedule."""

    name: str = "lapsewatch"
    policy: Policy = field(default_factory=Policy)
    sources: tuple[str, ...] = ("rdap", "dns")
    run_every_hours: float = 1.0
    confirm_hours: float | None = 1.0
    """A dangerous verdict not named by the registry's record waits this long for a
    confirming check (``LAPSEWATCH_CONFIRM_MINUTES``, being added to the cycle)."""
    before_fixes: bool = False
    """Leave out what this simulation made us add to the product (daily checks in the
    auto-renew grace, 14 days without an expiry date, the name-server rule), to show
    what they changed (docs/window.md)."""


PolicySpec = Warehouse | Lapsewatch


def default_policies() -> list[PolicySpec]:
    """What the issue asks to compare, and the variants worth showing."""
    return [
        Warehouse(),
        Lapsewatch(),
        Lapsewatch("lapsewatch_7d", Policy(interval=timedelta(days=7))),
        Lapsewatch("lapsewatch_fastly", sources=("rdap", "dns", "fastly")),
        Lapsewatch("lapsewatch_daily_run", run_every_hours=24.0),
        Lapsewatch(
            "lapsewatch_before_fixes",
            Policy(no_expiry_interval=timedelta(days=30)),
            before_fixes=True,
        ),
    ]


@dataclass
class Run:
    """One policy over one world: when each address was unverified (``None``: never)."""

    name: str
    unverified_at: list[float | None]
    requests: int


def _hours(value: datetime) -> float:
    return (value - ww.BASE).total_seconds() / 3600.0


def run_warehouse(
    world: ww.World, spec: Warehouse, params: Mapping[str, float], *, end: float, seed: int
) -> Run:
    rng = random.Random(seed)
    addresses = world.addresses
    interval, retry = spec.interval_days * 24.0, spec.retry_days * 24.0
    limit = spec.batch_limit or max(1, math.ceil(2 * len(addresses) / spec.interval_days))
    unverified: list[float | None] = [None] * len(addresses)
    due = [(-rng.uniform(0.0, interval) + interval, i) for i in range(len(addresses))]
    heapq.heapify(due)
    requests = 0
    now = spec.run_hour
    while now < end:
        taken = 0
        while due and due[0][0] <= now and taken < limit:
            _, i = heapq.heappop(due)
            taken += 1
            requests += 1
            if rng.random() < params["fastly_error_rate"]:
                heapq.heappush(due, (now + retry, i))  # last checked set back: due in ~7 days
                continue
            if rng.random() < params["fastly_unknown_rate"]:
                tokens: Sequence[str] = ("unknown",)
            elif addresses[i].domain < 0:
                tokens = ("active",)
            else:
                tokens = world.domains[addresses[i].domain].timeline.at(now).fastly.split()
            if WAREHOUSE_UNVERIFY.intersection(tokens):
                unverified[i] = now
            else:
                heapq.heappush(due, (now + interval, i))
        now += 24.0
    return Run(spec.name, unverified, requests)


def _affected(decision: Decision, verified_at: float) -> bool:
    """As ``lapsewatch.cycle.apply``: ``reregistered`` only takes addresses verified before."""
    if decision.verdict is Verdict.REREGISTERED:
        return decision.registered_at is not None and ww.when(verified_at) < decision.registered_at
    return decision.verdict.dangerous


@dataclass
class _DomainState:
    failures: int = 0
    expires_at: datetime | None = None
    confirming: bool = False
    nameservers: tuple[str, ...] = ()
    """Last seen while the domain was judged registered outside the grace."""


def run_lapsewatch(
    world: ww.World, spec: Lapsewatch, params: Mapping[str, float], *, end: float, seed: int
) -> Run:
    rng = random.Random(seed)
    policy, step = spec.policy, spec.run_every_hours
    unverified: list[float | None] = [None] * len(world.addresses)
    states = [_DomainState() for _ in world.domains]
    queue: list[tuple[float, int]] = []
    interval = policy.interval.total_seconds() / 3600.0
    for i, domain in enumerate(world.domains):
        # Steady state: each domain was last checked some time in the last interval.
        last = -rng.uniform(0.0, interval)
        seen = domain.timeline.at(last)
        states[i].expires_at = None if seen.expires_at is None else ww.when(seen.expires_at)
        if not spec.before_fixes:
            states[i].nameservers = seen.nameservers
        due = next_check(
            policy,
            now=ww.when(last),
            verdict=Verdict.REGISTERED,
            expires_at=states[i].expires_at,
            failures=0,
        )
        queue.append((max(_hours(due), 0.0), i))
    heapq.heapify(queue)
    requests = 0
    while queue:
        due_at, i = heapq.heappop(queue)
        t = math.ceil(due_at / step - 1e-9) * step
        if t >= end:
            break
        domain, state = world.domains[i], states[i]
        watched = [a for a in domain.addresses if unverified[a] is None]
        if not watched:
            continue
        observations: list[Observation] = []
        for source in spec.sources:
            observation, sent = domain.observe(source, t, rng, params)
            observations.append(observation)
            requests += sent
        now = ww.when(t)
        earliest = min(world.addresses[a].verified_at for a in watched)
        decision = decide(
            domain.name,
            observations,
            now=now,
            verified_at=ww.when(earliest),
            known_nameservers=state.nameservers,
        )
        if not spec.before_fixes:  # as cycle/apply.py keeps them
            state.nameservers = healthy_nameservers(decision, observations) or state.nameservers
        if any(o.source == "rdap" and o.answered for o in observations):
            state.expires_at = decision.expires_at  # only the registry's record moves it
        if decision.verdict.dangerous:
            if (
                spec.confirm_hours is not None
                and decision.doubt is not None
                and not state.confirming
            ):
                state.confirming = True
                heapq.heappush(queue, (t + spec.confirm_hours, i))
                continue
            for a in watched:
                if _affected(decision, world.addresses[a].verified_at):
                    unverified[a] = t
            if all(unverified[a] is not None for a in watched):
                continue  # nothing verified left on it: no longer checked
        state.confirming = False
        state.failures = state.failures + 1 if decision.verdict is Verdict.UNKNOWN else 0
        due = next_check(
            policy,
            now=now,
            verdict=decision.verdict,
            expires_at=state.expires_at,
            failures=state.failures,
            in_grace=not spec.before_fixes and in_auto_renew_grace(observations),
        )
        heapq.heappush(queue, (_hours(due), i))
    return Run(spec.name, unverified, requests)


def run_policy(
    world: ww.World, spec: PolicySpec, params: Mapping[str, float], *, end: float, seed: int
) -> Run:
    if isinstance(spec, Warehouse):
        return run_warehouse(world, spec, params, end=end, seed=seed)
    return run_lapsewatch(world, spec, params, end=end, seed=seed)


def _overlap(intervals: Sequence[tuple[float, float]], start: float, stop: float) -> float:
    return sum(max(0.0, min(b, stop) - max(a, start)) for a, b in intervals)


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
    owner_kept: int = 0
    """Addresses unverified whose registrant kept the domain (late renewal): correct,
    since the domain was in an expiry phase, but a cost to the owner."""
    censored: int = 0
    """Addresses of dropped domains still verified at the end of the run."""


def figures(
    world: ww.World, run: Run, *, end: float
) -> tuple[dict[str, float | int | None], Detail]:
    """The issue's figures for one run, and the breakdown behind them."""
    exposure = 0.0
    takeovers, false = 0, 0
    windows: list[float] = []
    detail = Detail()
    takeable = {
        i: d.timeline.intervals(end) for i, d in enumerate(world.domains) if d.kind != "renewed"
    }
    for a, address in enumerate(world.addresses):
        gone = run.unverified_at[a]
        if address.domain < 0:
            false += gone is not None  # a free provider is always healthy
            continue
        domain = world.domains[address.domain]
        if gone is not None:
            if domain.timeline.at(gone).healthy:
                false += 1
            elif domain.kind in ("renewed", "renewed_late"):
                detail.owner_kept += 1
        if address.domain not in takeable:
            continue
        until = end if gone is None else gone
        hours = _overlap(takeable[address.domain], 0.0, until)
        kind = f"{domain.tld}:{domain.kind}"
        if hours > 0:
            exposure += hours
            detail.windows.append(hours)
            detail.exposure_by_kind[kind] += hours
        for taken in domain.takeovers:
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


def simulate(
    params: Mapping[str, float],
    *,
    domains: int = 10_000,
    seed: int = 1,
    days: float = 365.0,
    tail_days: float = 120.0,
    policies: Sequence[PolicySpec] | None = None,
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
    return Simulation(dict(params), results, details, world)


# Report --------------------------------------------------------------------------------

_BUCKETS = (
    (1.0, "< 1 h"),
    (24.0, "1 h-1 d"),
    (168.0, "1-7 d"),
    (720.0, "7-30 d"),
    (2160.0, "30-90 d"),
    (math.inf, "≥ 90 d"),
)
_BARS = " ▏▎▍▌▋▊▉█"


def _bar(value: float, widest: float, width: int = 30) -> str:
    if widest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / widest * width * 8))
    return "█" * (eighths // 8) + (_BARS[eighths % 8] if eighths % 8 else "")


def histogram(details: Mapping[str, Detail]) -> str:
    """Per policy, how many exposed addresses had a window of each length."""
    lines = []
    counts = {
        name: Counter(next(label for top, label in _BUCKETS if w < top) for w in d.windows)
        for name, d in details.items()
    }
    widest = max((c for cs in counts.values() for c in cs.values()), default=0)
    for name, c in counts.items():
        lines.append(f"{name} ({sum(c.values())} addresses exposed)")
        for _, label in _BUCKETS:
            lines.append(f"  {label:>8} {c[label]:6d} {_bar(c[label], widest)}")
    return "\n".join(lines)


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


def criteria(results: Mapping[str, Mapping[str, float | int | None]]) -> list[tuple[str, bool]]:
    """The issue's acceptance criteria, lapsewatch (defaults) against warehouse."""
    w, lw = results["warehouse"], results["lapsewatch"]

    def num(v: float | int | None) -> float:
        return 0.0 if v is None else float(v)

    return [
        (
            "exposure_hours <= 10% of warehouse",
            num(lw["exposure_hours"]) <= 0.1 * num(w["exposure_hours"]),
        ),
        ("0 false_unverifications", num(lw["false_unverifications"]) == 0),
        ("requests <= warehouse", num(lw["requests"]) <= num(w["requests"])),
    ]


def report(sim: Simulation, factor: float) -> str:
    lines = [f"## durations x{factor:g}", "", table(sim.results), ""]
    for text, holds in criteria(sim.results):
        lines.append(f"- lapsewatch {text}: {'holds' if holds else 'FAILS'}")
    kinds = Counter(f"{d.tld}:{d.kind}" for d in sim.world.domains)
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
    lines += [
        "",
        "(takeovers possible in brackets)",
        "",
        "owners who kept their domain but were unverified during its expiry phase: "
        + ", ".join(f"{n} {d.owner_kept}" for n, d in sim.details.items()),
        "dropped-domain addresses still verified at the end: "
        + ", ".join(f"{n} {d.censored}" for n, d in sim.details.items()),
        "",
        "```",
        histogram(sim.details),
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
    args = parser.parse_args(argv)
    if args.dump_params:
        print(json.dumps(ww.DEFAULT_PARAMS, indent=2))
        return 0
    base = _load_params(args.params)
    factors = [1.0, *(args.perturb or [])]
    failed = False
    for n, factor in enumerate(factors):
        params = ww.perturbed(base, factor)
        sim = simulate(
            params, domains=args.domains, seed=args.seed, days=args.days, tail_days=args.tail_days
        )
        print(report(sim, factor), end="\n\n", flush=True)
        failed |= not all(holds for _, holds in criteria(sim.results))
        if args.json:
            out = {"params": sim.params, "policies": sim.results}
            _json_path(args.json, factor, n == 0).write_text(json.dumps(out, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
