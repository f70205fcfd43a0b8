"""The policies of ``bench/window.py`` on a simulated world: PyPI's two tasks
(``warehouse``) and lapsewatch's cycle, driven through the product's own pure code.

lapsewatch, per check of a due domain, as ``lapsewatch check`` does it:

* every source asked (``Domain.observe``: requests and retries as the sources send them);
  a delegated DNS answer is followed by the MX query ``DnsSource`` sends
  (``mail_hosts=True``, the default: one more request, one try), and an NXDOMAIN by the
  SOA query that confirms the zone, once per zone and cycle run (``_doubt_nxdomain``);
* the MX read only when ``DueDomain.read_mail_hosts`` says so (never read, or read
  ``Policy.mail_hosts_interval`` ago), else the DNS source asked without it; and asked again with
  it when ``verdict.needs_mail_hosts`` says the grace name-server rule needs it, as
  ``cycle.checker.Checker.check_one`` does;
* the mail-host domains the MX names (or, not read, the stored mail hosts), chosen by
  the product's ``mail_host_domains`` (well-known providers and the domain itself left
  out), each checked once per cycle run through the same sources without their own MX
  and judged by ``decide``, as ``MailHostChecks`` does, unless a verdict kept from an
  earlier run still stands (``mail_hosts.kept_until``: a ``registered`` one on the
  registry's record, for ``Policy.mail_host_keep`` at most and never past that
  domain's own next check);
* ``mail_hosts.registered_since_read`` (a mail-host domain registered after the MX
  naming it was read is ``reregistered``), then ``verdict.decide`` with the known name
  servers and mail hosts and those mail-host verdicts;
* ``confirm.settle`` with ``Policy.confirm`` and the open pending confirmation, found
  as ``cycle.apply.settle_results`` finds it (the one step copied here: that function
  reads the pending confirmation from the events table);
* the domain row's next state from ``cycle.apply._next_state`` (failure count, known
  dates, name servers and mail hosts with their read time, next due time through
  ``schedule.next_check``), and the addresses taken by ``cycle.apply._affected``: both
  pure, private to ``cycle.apply``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import window_world as ww
from lapsewatch.confirm import Pending, settle
from lapsewatch.cycle.apply import CheckResult, _affected, _Known, _next_state
from lapsewatch.cycle.due import DueDomain
from lapsewatch.mail_hosts import (
    kept_until,
    mail_host_domains,
    not_read_again,
    registered_since_read,
)
from lapsewatch.schedule import Policy
from lapsewatch.sources.interface import Observation
from lapsewatch.store.models import Email
from lapsewatch.verdict import (
    Decision,
    MailHostCheck,
    Verdict,
    decide,
    needs_mail_hosts,
    read_mail_hosts,
)

__all__ = [
    "WAREHOUSE_UNVERIFY",
    "Lapsewatch",
    "LapsewatchRun",
    "PolicySpec",
    "Run",
    "Warehouse",
    "run_lapsewatch",
    "run_policy",
    "run_warehouse",
]

WAREHOUSE_UNVERIFY = frozenset({"undelegated", "inactive", "expiring", "deleting", "unknown"})
"""Fastly tokens on which PyPI's unverify task unverifies an address."""


@dataclass(frozen=True)
class Warehouse:
    """PyPI's two daily tasks (``warehouse/accounts/tasks.py``, scheduled in
    ``warehouse/accounts/__init__.py``): at 04:00 ``batch_update_email_domain_status``
    asks Fastly about up to ``check_limit`` email rows last checked 30 days ago or more
    (oldest first, verified or not: the query does not filter), one request each; a
    failed request sets the row's last check 23 days back (retried ~7 days later); at
    04:15 ``unverify_emails_with_expired_domains`` unverifies up to ``unverify_limit``
    verified rows whose stored status has an unverify token, oldest check first."""

    name: str = "warehouse"
    interval_days: float = 30.0
    retry_days: float = 7.0
    check_hour: float = 4.0
    check_limit: int | None = 1_000
    """Rows checked per daily run; ``None``: no limit."""
    unverify_hour: float = 4.25
    unverify_limit: int | None = 1_000


@dataclass(frozen=True)
class Lapsewatch:
    """lapsewatch's cycle, run every ``run_every_hours`` (cron), with ``policy``."""

    name: str = "lapsewatch"
    policy: Policy = field(default_factory=Policy)
    sources: tuple[str, ...] = ("rdap", "dns")
    run_every_hours: float = 1.0


PolicySpec = Warehouse | Lapsewatch


@dataclass
class Run:
    """One policy over one world: when each address was unverified (``None``: never)."""

    name: str
    unverified_at: list[float | None]
    requests: int
    requests_by_kind: Counter[str] = field(default_factory=Counter)
    """``rdap``, ``dns`` (NS queries), ``mx``, ``dns_soa``, ``fastly``, ``mail_host``
    (everything sent about mail-host domains)."""
    checks: int = 0
    """Domain checks (lapsewatch) or address checks (warehouse)."""


def _hours(value: datetime) -> float:
    return (value - ww.BASE).total_seconds() / 3600.0


# warehouse -----------------------------------------------------------------------------


def run_warehouse(
    world: ww.World, spec: Warehouse, params: Mapping[str, float], *, end: float, seed: int
) -> Run:
    rng = random.Random(seed)
    addresses = world.addresses
    count = len(addresses)
    interval, retry = spec.interval_days * 24.0, spec.retry_days * 24.0
    check_limit = spec.check_limit or count
    unverify_limit = spec.unverify_limit or count
    # Steady state before the run: a pass over every row takes the longer of 30 days and
    # what the batch limit allows, so each row was last checked somewhere in one pass.
    cycle = max(interval, math.ceil(count / check_limit) * 24.0)
    last = [-rng.uniform(0.0, cycle) for _ in range(count)]
    due = [(last[i], i) for i in range(count)]
    heapq.heapify(due)
    flagged: set[int] = set()
    """Verified rows whose stored status has an unverify token."""
    unverified: list[float | None] = [None] * count
    kinds: Counter[str] = Counter()
    checks = 0
    day = 0
    while day * 24.0 + spec.check_hour < end:
        now = day * 24.0 + spec.check_hour
        taken = 0
        while due and due[0][0] <= now - interval and taken < check_limit:
            _, i = heapq.heappop(due)
            taken += 1
            checks += 1
            kinds["fastly"] += 1
            if rng.random() < params["fastly_error_rate"]:
                last[i] = now - (interval - retry)  # "retried in ~7 days"
            else:
                last[i] = now
                if rng.random() < params["fastly_unknown_rate"]:
                    tokens: Sequence[str] = ("unknown",)
                elif addresses[i].domain < 0:
                    tokens = ("active",)
                else:
                    tokens = world.domains[addresses[i].domain].timeline.at(now).fastly.split()
                if WAREHOUSE_UNVERIFY.intersection(tokens) and unverified[i] is None:
                    flagged.add(i)
                else:
                    flagged.discard(i)
            heapq.heappush(due, (last[i], i))
        at = day * 24.0 + spec.unverify_hour
        if flagged and at < end:
            for i in sorted(flagged, key=lambda i: last[i])[:unverify_limit]:
                unverified[i] = at
                flagged.discard(i)
        day += 1
    return Run(spec.name, unverified, sum(kinds.values()), kinds, checks)


# lapsewatch ----------------------------------------------------------------------------


@dataclass
class _State:
    """What the store keeps about one domain between checks."""

    known: _Known
    """The ``domains`` row, as ``cycle.apply`` reads it."""
    due: float = 0.0
    pending: Pending | None = None
    """The open pending confirmation (the latest confirmation event, if pending)."""


def _known(values: Mapping[str, Any]) -> _Known:
    """The row after ``cycle.apply._next_state``'s ``values``."""
    return _Known(
        values["consecutive_failures"],
        values["last_verdict"],
        values["registered_at"],
        values["expires_at"],
        values["dangerous_at"],
        values["dangerous_verdict"],
        values["nameservers"],
        values["mail_hosts"],
        values["mail_hosts_read_at"],
    )


class LapsewatchRun:
    """lapsewatch's cycle over one world: :meth:`check` is one domain's check in the
    cycle run at hour ``t``; :meth:`run` the whole simulated time."""

    def __init__(
        self, world: ww.World, spec: Lapsewatch, params: Mapping[str, float], *, seed: int
    ) -> None:
        self.world, self.spec, self.params = world, spec, params
        self.policy = spec.policy
        self.rng = random.Random(seed)
        self.unverified: list[float | None] = [None] * len(world.addresses)
        self.kinds: Counter[str] = Counter()
        self.checks = 0
        self._run_at: float | None = None
        self._zones_seen: set[str] = set()
        self._mail_checked: dict[str, Decision] = {}
        self._mail_kept: dict[str, tuple[Decision, datetime]] = {}
        """Verdicts kept across runs until due (``mail_hosts.kept_until``), as the
        ``mail_host_verdicts`` table keeps them."""
        self._pairs: dict[tuple[str, tuple[str, ...]], list[tuple[str, str]]] = {}
        self.states = [self._steady(domain) for domain in world.domains]

    # Before the run: each domain was last checked, successfully, within its interval.

    def _steady(self, domain: ww.Domain) -> _State:
        state = _State(_Known(0, None, None, None))
        probe = self._settle_truth(domain, -1.0, state, dry=True)
        period = max(probe + 1.0, 1.0)
        last = -self.rng.uniform(0.0, period)
        state.due = max(self._settle_truth(domain, last, state, dry=False), 0.0)
        return state

    def _settle_truth(self, domain: ww.Domain, hour: float, state: _State, *, dry: bool) -> float:
        """A check at ``hour`` that saw the truth; the next due hour (``dry``: not kept)."""
        observations = tuple(domain.truth(source, hour) for source in self.spec.sources)
        now = ww.when(hour)
        earliest = self._earliest(domain)
        decision = settle(
            decide(domain.name, observations, now=now, verified_at=earliest),
            None,
            now=now,
            confirm_after=self.policy.confirm,
        ).decision
        result = CheckResult(domain.name, earliest, observations, decision, now)
        values, _ = _next_state(state.known, result, self.policy)
        if not dry:
            state.known = _known(values)
        next_due: datetime = values["next_due_at"]
        return _hours(next_due)

    def _earliest(self, domain: ww.Domain) -> datetime:
        watched = [a for a in domain.addresses if self.unverified[a] is None]
        return ww.when(min(self.world.addresses[a].verified_at for a in watched))

    # One cycle run's shared state: mail-host verdicts, zones confirmed for NXDOMAIN.

    def _at_run(self, t: float) -> None:
        if self._run_at != t:
            self._run_at = t
            self._zones_seen.clear()
            self._mail_checked.clear()

    def _observe(
        self,
        domain: ww.Domain,
        t: float,
        *,
        read_mx: bool,
        kind: str | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[Observation]:
        """Each source's (default: every one's) observation of ``domain``, with the
        requests counted under each source's name (or all under ``kind``)."""
        observations = []
        for source in self.spec.sources if sources is None else sources:
            observation, sent, mx = domain.observe(
                source, t, self.rng, self.params, read_mx=read_mx
            )
            self.kinds[kind or source] += sent - mx
            self.kinds[kind or "mx"] += mx
            if source == "dns" and observation.answered and observation.found is False:
                zone = domain.name.rsplit(".", 1)[-1]
                if zone not in self._zones_seen:
                    self._zones_seen.add(zone)  # DnsSource confirms the zone once per run
                    self.kinds[kind or "dns_soa"] += 1
            observations.append(observation)
        return observations

    def _mail_hosts(
        self, name: str, observations: Sequence[Observation], t: float, stored: tuple[str, ...]
    ) -> tuple[MailHostCheck, ...]:
        """As ``MailHostChecks.for_domain``: each mail-host domain checked once a run."""
        dns = next((o for o in observations if o.source == "dns" and o.answered), None)
        read = None if dns is None else dns.mail_hosts
        hosts = stored if read is None else read
        if not hosts:
            return ()
        key = (name, hosts)
        pairs = self._pairs.get(key)
        if pairs is None:  # pure: asked once per (domain, mail hosts)
            pairs = self._pairs[key] = mail_host_domains(name, observations, stored=stored)
        found = []
        for host, registrable in pairs:
            decision = self._mail_checked.get(registrable)
            kept = self._mail_kept.get(registrable)
            if decision is None and kept is not None and kept[1] > ww.when(t):
                decision = kept[0]
            if decision is None:
                mail_domain = self.world.mail_domain(registrable)
                seen = self._observe(mail_domain, t, read_mx=False, kind="mail_host")
                now = ww.when(t)
                decision = decide(registrable, seen, now=now)
                self._mail_checked[registrable] = decision
                until = kept_until(self.policy, decision, seen, now)
                self._mail_kept[registrable] = (decision, until or now)  # now: not kept
            found.append(MailHostCheck(host, registrable, decision))
        return tuple(found)

    def check(self, i: int, t: float) -> float | None:
        """Domain ``i``'s check in the cycle run at hour ``t``: the next due hour, or
        ``None`` when no address on it is verified any more."""
        domain, state = self.world.domains[i], self.states[i]
        watched = [a for a in domain.addresses if self.unverified[a] is None]
        if not watched:
            return None
        self._at_run(t)
        self.checks += 1
        now = ww.when(t)
        earliest = self._earliest(domain)
        known = state.known
        due = DueDomain(
            domain.name,
            earliest,
            tuple(known.nameservers or ()),
            tuple(known.mail_hosts or ()),
            known.mail_hosts_read_at,
        )
        read_mx = due.read_mail_hosts(self.policy, now)
        observations = self._observe(domain, t, read_mx=read_mx)
        if not read_mx and needs_mail_hosts(
            observations, due.known_nameservers, due.known_mail_hosts
        ):
            (again,) = self._observe(domain, t, read_mx=True, sources=("dns",))
            observations = [again if o.source == "dns" else o for o in observations]

        def with_registration_dates() -> tuple[MailHostCheck, ...]:
            return registered_since_read(
                self._mail_hosts(domain.name, observations, t, due.known_mail_hosts),
                due.known_mail_hosts,
                due.mail_hosts_read_at,
                earliest,
                now,
            )

        mail_hosts = with_registration_dates()
        if read_mail_hosts(observations) is None and any(
            m.decision.verdict is Verdict.REREGISTERED for m in mail_hosts
        ):  # as Checker.check_one: does the MX still name that domain?
            (again,) = self._observe(domain, t, read_mx=True, sources=("dns",))
            if read_mail_hosts([again]) is None:  # no telling: that mail host is unknown
                mail_hosts = not_read_again(mail_hosts)
            else:
                observations = [again if o.source == "dns" else o for o in observations]
                mail_hosts = with_registration_dates()
        decision = decide(
            domain.name,
            observations,
            now=now,
            verified_at=earliest,
            known_nameservers=due.known_nameservers,
            known_mail_hosts=due.known_mail_hosts,
            mail_hosts=mail_hosts,
        )
        # The confirmation rule, as cycle.apply.settle_results applies it: the open
        # pending confirmation is looked up for a thin dangerous verdict now, or a
        # domain left "unknown" last time.
        asks = (decision.verdict.dangerous and decision.doubt) or (
            state.known.last_verdict == Verdict.UNKNOWN.value
        )
        settled = settle(
            decision,
            state.pending if asks else None,
            now=now,
            confirm_after=self.policy.confirm,
        )
        if settled.record == "pending":
            assert settled.decision.pending is not None
            state.pending = Pending(settled.decision.pending, now)
        elif settled.record is not None:
            state.pending = None
        decision = settled.decision
        result = CheckResult(domain.name, earliest, tuple(observations), decision, now)
        values, _ = _next_state(state.known, result, self.policy)
        state.known = _known(values)
        if decision.verdict.dangerous:
            for a in watched:
                trusted = Email(verified_at=ww.when(self.world.addresses[a].verified_at))
                if _affected(trusted, result):
                    self.unverified[a] = t
            if all(self.unverified[a] is not None for a in watched):
                return None  # nothing verified left on it: no longer due
        next_due: datetime = values["next_due_at"]
        return _hours(next_due)

    def run(self, end: float) -> Run:
        step = self.spec.run_every_hours
        queue = [(state.due, i) for i, state in enumerate(self.states)]
        heapq.heapify(queue)
        while queue:
            due_at, i = heapq.heappop(queue)
            t = math.ceil(due_at / step - 1e-9) * step
            if t >= end:
                break
            following = self.check(i, t)
            if following is not None:
                heapq.heappush(queue, (max(following, t + 1e-6), i))
        return Run(
            self.spec.name, self.unverified, sum(self.kinds.values()), self.kinds, self.checks
        )


def run_lapsewatch(
    world: ww.World, spec: Lapsewatch, params: Mapping[str, float], *, end: float, seed: int
) -> Run:
    return LapsewatchRun(world, spec, params, seed=seed).run(end)


def run_policy(
    world: ww.World, spec: PolicySpec, params: Mapping[str, float], *, end: float, seed: int
) -> Run:
    if isinstance(spec, Warehouse):
        return run_warehouse(world, spec, params, end=end, seed=seed)
    return run_lapsewatch(world, spec, params, end=end, seed=seed)


def default_policies(variants: bool = True) -> list[PolicySpec]:
    """What the issue asks to compare, and (``variants``) the other variants worth
    showing."""
    core: list[PolicySpec] = [
        Warehouse(),
        Warehouse("warehouse_10k", check_limit=10_000),
        Lapsewatch(),
    ]
    if not variants:
        return core
    return [
        *core,
        Lapsewatch("lapsewatch_7d", Policy(interval=timedelta(days=7))),
        Lapsewatch("lapsewatch_fastly", sources=("rdap", "dns", "fastly")),
        Lapsewatch("lapsewatch_daily_run", run_every_hours=24.0),
    ]
