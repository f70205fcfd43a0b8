"""The simulated world of ``bench/window.py``: email domains, their lifecycles, and what
each status source (RDAP, DNS, Fastly) would answer about them at any hour.

Every domain gets one timeline: a sorted list of ``(start_hour, View)`` segments from
"forever ago" to the end of the run. A :class:`View` is everything observable at once
(the registry's record, the delegation and the mail hosts (MX) it serves, Fastly's
tokens) plus the two facts the observers cannot see and the figures need: who holds
the name, and whether anyone could take it. Times are hours from the start of the run
(negative = before it).

Besides its lifecycle, a domain has its owner's mail hosts (a well-known provider, its
own, or a smaller third-party host whose domain lapsewatch checks too: a pool of
:attr:`World.mail_domains`), and its owner may move DNS hosting once in the year
(new name servers, same mail hosts), at any time the domain is healthy, including the
auto-renew grace of a renewal the registry made for a paying owner.

The figures and their sources are in ``docs/window.md``; every number here that the
literature does not give is marked an assumption there.
"""

from __future__ import annotations

import bisect
import functools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from lapsewatch.sources.dns import PARKING_NAMESERVER_DOMAINS
from lapsewatch.sources.interface import Observation, Outcome

__all__ = [
    "BASE",
    "DEFAULT_PARAMS",
    "MOVED_NS",
    "OWNER_NS",
    "PROVIDER_MX",
    "YEAR_HOURS",
    "Address",
    "Domain",
    "Timeline",
    "View",
    "World",
    "build_world",
    "fastly_observation",
    "healthy_mail_domain",
    "mail_domain_name",
    "mail_domain_of",
    "move_dns",
    "perturbed",
    "when",
]

BASE = datetime(2026, 1, 1, tzinfo=UTC)
"""Hour 0 of every run: lapsewatch's code wants datetimes."""
YEAR_HOURS = 8766.0
ATTEMPTS = 3
"""``LAPSEWATCH_ATTEMPTS``: tries per request on network errors, 429 and 5xx."""

DEFAULT_PARAMS: dict[str, float] = {
    # Which registry a domain is at (assumption: PyPI-like, mostly gTLD-style names).
    "tld_share_gtld": 0.80,
    "tld_share_uk": 0.07,
    "tld_share_de": 0.08,
    "tld_share_nl": 0.05,
    # Addresses (shape of bench/cycle.py's registry: 70% at free providers, 1.5 a domain).
    "addresses_per_domain_mean": 1.5,
    "free_provider_share": 0.70,
    # One expiry a domain in the year; this share lapses (assumption).
    "lapse_rate": 0.08,
    # Renewals (shares of renewals; assumption): long before, shortly before, by the
    # registry's auto-renew kept by a paying owner, or late during the grace.
    "renew_early_share": 0.55,
    "renew_early_min_days": 10.0,
    "renew_early_max_days": 60.0,
    "renew_on_time_share": 0.25,
    "renew_on_time_max_days": 10.0,
    "renew_autorenew_share": 0.12,
    "renew_late_share": 0.08,
    "renew_late_max_days": 30.0,
    # gTLD registry (ICANN): auto-renew grace, redemption, pending delete.
    "autorenew_grace_days": 45.0,
    "redemption_days": 30.0,
    "pending_delete_days": 5.0,
    # gTLD registrar after expiry (ERRP: DNS interrupted before deletion).
    "registrar_action_max_days": 5.0,
    "registrar_parking_share": 0.40,
    "delete_after_expiry_min_days": 25.0,
    "delete_after_expiry_max_days": 45.0,
    # Expired-domain auctions during the grace (GoDaddy-style timeline; share assumed).
    "auction_sold_share": 0.15,
    "auction_end_days": 36.0,
    "auction_push_max_days": 14.0,
    # Early deletion by the registrar (Barron et al. 2019; share assumed).
    "early_deletion_share": 0.05,
    "early_deletion_max_days": 120.0,
    # ccTLDs.
    "uk_suspend_after_expiry_days": 30.0,
    "uk_cancel_after_expiry_days": 90.0,
    "uk_pending_delete_days": 5.0,
    "de_redemption_days": 30.0,
    "nl_quarantine_days": 40.0,
    # After the drop (Lauinger et al. 2018: 9.5% at zero delay; the rest assumed).
    "dropcatch_zero_delay_share": 0.095,
    "rereg_first_day_share": 0.10,
    "rereg_first_day_hours": 24.0,
    "rereg_later_share": 0.10,
    "rereg_later_max_days": 60.0,
    "new_owner_parks_share": 0.50,
    # Changes that change nothing.
    "transfer_rate": 0.03,
    "transfer_pending_days": 5.0,
    # The owner's mail hosts (MX; assumption, after Liu et al., IMC 2021): a well-known
    # provider on lapsewatch's list, the domain's own host, or a third-party host drawn
    # from a pool of smaller hosting companies (whose domain lapsewatch checks); the rest
    # publish no MX.
    "mx_provider_share": 0.50,
    "mx_self_share": 0.15,
    "mx_third_party_share": 0.25,
    "mx_third_party_pool": 300.0,
    # The share of those hosting companies' own domains that lapse in the year, along a
    # gTLD lifecycle (assumption: fewer than owners' domains; hijagger's case).
    "mail_host_lapse_rate": 0.03,
    # A healthy owner moves DNS hosting (all name servers replaced, same mail hosts):
    # the share of domains that do so within the year (assumption).
    "ns_change_rate": 0.10,
    # Source errors (assumption): an outage fails every attempt of a check.
    "rdap_outage_rate": 0.005,
    "rdap_error_rate": 0.02,
    "dns_outage_rate": 0.002,
    "dns_error_rate": 0.01,
    "fastly_error_rate": 0.01,
    "fastly_unknown_rate": 0.0005,
}

OWNER_NS = ("ns1.webhost.example", "ns2.webhost.example")
_NEW_OWNER_NS = ("ns1.newowner-hosting.example", "ns2.newowner-hosting.example")
_REGISTRAR_EXPIRY_NS = ("ns1.expired.registrar.example", "ns2.expired.registrar.example")
"""A registrar's own "this domain has expired" parking; lapsewatch's list does not know it."""
_AFTERMARKET_NS = ("ns1.sedoparking.com", "ns2.sedoparking.com")
"""Where a domain investor parks a name for sale; lapsewatch's list knows it."""
MOVED_NS = ("ada.ns.dnsprovider.example", "bob.ns.dnsprovider.example")
"""Where an owner who moves DNS hosting goes (shares no name server with before)."""
_REGISTRAR_PARKING_MAIL = ("[198.51.100.1]",)
_AFTERMARKET_MAIL = ("[198.51.100.2]",)
"""The address of a parking page: with no MX, the implicit mail host ``DnsSource`` reports
(RFC 5321 5.1; nothing there accepts mail, but it is not the owner's)."""
PROVIDER_MX = (
    ("aspmx.l.google.com", "alt1.aspmx.l.google.com"),
    ("{label}.mail.protection.outlook.com",),
    ("mx01.mail.icloud.com", "mx02.mail.icloud.com"),
    ("in1-smtp.messagingengine.com", "in2-smtp.messagingengine.com"),
    ("mx.zoho.com", "mx2.zoho.com"),
    ("smtp.secureserver.net", "mailstore1.secureserver.net"),
    ("mx00.ionos.de", "mx01.ionos.de"),
)
"""Mail hosts at well-known providers (on lapsewatch's ``mail_providers.txt``: not checked)."""
_HEALTHY = frozenset({"ok", "autorenew_paid"})
_TAKEABLE = frozenset({"available"})


def perturbed(params: Mapping[str, float], factor: float) -> dict[str, float]:
    """Every duration (a key ending in ``_days`` or ``_hours``) times ``factor``."""
    return {k: v * factor if k.endswith(("_days", "_hours")) else v for k, v in params.items()}


_WHEN: dict[float, datetime] = {}


def when(hours: float) -> datetime:
    """Hour ``hours`` of the run as a datetime (cached: most are whole run hours)."""
    found = _WHEN.get(hours)
    if found is None:
        if len(_WHEN) > 1_000_000:
            _WHEN.clear()
        found = _WHEN[hours] = BASE + timedelta(hours=hours)
    return found


@dataclass(frozen=True, slots=True)
class View:
    """What is true of a domain during one segment of its timeline."""

    phase: str
    """``ok``, ``autorenew_paid``, ``grace``, ``redemption``, ``pending_delete``,
    ``expired`` (.uk), ``suspended`` (.uk), ``quarantine`` (.nl), ``available``,
    ``new_owner``."""
    owner: int
    """0: the registrant the addresses belong to; anything else: somebody new."""
    rdap_found: bool
    rdap_status: tuple[str, ...]
    registered_at: float | None
    expires_at: float | None
    nameservers: tuple[str, ...]
    """Empty: not in the TLD zone (NXDOMAIN)."""
    fastly: str
    mail_hosts: tuple[str, ...] = ()
    """The mail hosts the delegated zone serves as ``DnsSource`` reports them: its MX
    targets (best first), or with no MX its address (``[203.0.113.7]``, the implicit MX);
    empty: none."""

    @property
    def takeable(self) -> bool:
        """Free to register after the drop, or held by somebody new."""
        return self.phase in _TAKEABLE or self.owner != 0

    @property
    def healthy(self) -> bool:
        """Registered, paid, held by the same registrant."""
        return self.phase in _HEALTHY and self.owner == 0


@dataclass
class Timeline:
    starts: list[float] = field(default_factory=list)
    views: list[View] = field(default_factory=list)

    def add(self, start: float, view: View) -> None:
        """Append a segment; segments must come in time order."""
        if self.starts and start < self.starts[-1]:
            raise ValueError(f"segment at {start} before {self.starts[-1]}")
        if self.starts and start == self.starts[-1]:
            self.views[-1] = view
            return
        self.starts.append(start)
        self.views.append(view)

    def at(self, hour: float) -> View:
        return self.views[max(bisect.bisect_right(self.starts, hour) - 1, 0)]

    def intervals(self, end: float) -> list[tuple[float, float]]:
        """The ``[start, stop)`` hours, up to ``end``, during which the name could be taken."""
        out: list[tuple[float, float]] = []
        for i, view in enumerate(self.views):
            stop = self.starts[i + 1] if i + 1 < len(self.starts) else end
            if view.takeable and stop > self.starts[i]:
                out.append((self.starts[i], min(stop, end)))
        return out


@dataclass
class Address:
    domain: int
    """Index into the world's domains; -1 for a free provider (always healthy)."""
    verified_at: float


@dataclass
class Domain:
    name: str
    tld: str
    kind: str
    """The lifecycle drawn, for the breakdown: ``renewed``, ``auction``, ``dropped``, …"""
    timeline: Timeline
    addresses: list[int] = field(default_factory=list)
    drop_at: float | None = None
    takeovers: list[float] = field(default_factory=list)
    """Hours at which somebody new came to hold the name."""
    transfer: tuple[float, float] | None = None
    """An inter-registrar transfer pending during these hours (changes nothing)."""
    ns_moved_at: float | None = None
    """When the owner moved DNS hosting (new name servers, same mail hosts), if ever."""

    def observe(
        self,
        source: str,
        hour: float,
        rng: random.Random,
        p: Mapping[str, float],
        *,
        read_mx: bool = True,
    ) -> tuple[Observation, int, int]:
        """What ``source`` answers at ``hour``, the requests it took, and the MX queries
        among them: after a delegated answer ``DnsSource`` (``mail_hosts=True``) asks
        for the MX at the same resolver, one request, up to ATTEMPTS tries (and the A
        record when the zone publishes no MX: one more; a failure, at
        ``dns_error_rate``, leaves the mail hosts unknown). ``read_mx=False``: not asked."""
        view = self.timeline.at(hour)
        at = when(hour)
        if source == "fastly":
            observation, sent = self._fastly(view, at, rng, p)
            return observation, sent, 0
        outage, error = p[f"{source}_outage_rate"], p[f"{source}_error_rate"]
        if rng.random() < outage:
            return Observation.error(source, self.name, "timeout", observed_at=at), ATTEMPTS, 0
        requests = 1
        while rng.random() < error:
            if requests == ATTEMPTS:
                failed = Observation.error(source, self.name, "HTTP 503", observed_at=at)
                return failed, requests, 0
            requests += 1
        if source == "rdap":
            return self._rdap(view, at, hour), requests, 0
        if not (read_mx and view.nameservers):
            return self._dns(view, at), requests, 0
        # The MX query, and with no MX published the A query (the implicit MX), each
        # tried up to ATTEMPTS times (DnsSource._ask); a failure leaves them unknown.
        queries = 2 if all(h.startswith("[") for h in view.mail_hosts) else 1
        sent = 0
        for _ in range(queries):
            for attempt in range(1, ATTEMPTS + 1):
                sent += 1
                if rng.random() >= p["dns_error_rate"]:
                    break
                if attempt == ATTEMPTS:
                    return self._dns(view, at, None), requests + sent, sent
        return self._dns(view, at, view.mail_hosts), requests + sent, sent

    def truth(self, source: str, hour: float) -> Observation:
        """What ``source`` answers at ``hour`` without any error (mail hosts included)."""
        view, at = self.timeline.at(hour), when(hour)
        if source == "rdap":
            return self._rdap(view, at, hour)
        if source == "fastly":
            return fastly_observation(self.name, tuple(view.fastly.split()), at)
        return self._dns(view, at, view.mail_hosts if view.nameservers else None)

    def _rdap(self, view: View, at: datetime, hour: float) -> Observation:
        if not view.rdap_found:
            return Observation(
                "rdap", self.name, Outcome.ANSWERED, "HTTP 404", found=False, observed_at=at
            )
        status = view.rdap_status
        if self.transfer and self.transfer[0] <= hour < self.transfer[1]:
            status = (*status, "pending transfer")
        return Observation(
            "rdap",
            self.name,
            Outcome.ANSWERED,
            f"status {', '.join(status)}",
            found=True,
            status=status,
            registered_at=None if view.registered_at is None else when(view.registered_at),
            expires_at=None if view.expires_at is None else when(view.expires_at),
            nameservers=view.nameservers,
            observed_at=at,
        )

    def _dns(
        self, view: View, at: datetime, mail_hosts: tuple[str, ...] | None = None
    ) -> Observation:
        if not view.nameservers:
            return Observation(
                "dns",
                self.name,
                Outcome.ANSWERED,
                "NXDOMAIN",
                found=False,
                status=("undelegated",),
                observed_at=at,
            )
        parked = any(_is_parking(ns) for ns in view.nameservers)
        return Observation(
            "dns",
            self.name,
            Outcome.ANSWERED,
            f"delegated to {view.nameservers[0]}",
            found=True,
            status=("delegated", "parked") if parked else ("delegated",),
            nameservers=view.nameservers,
            mail_hosts=mail_hosts,
            observed_at=at,
        )

    def _fastly(
        self, view: View, at: datetime, rng: random.Random, p: Mapping[str, float]
    ) -> tuple[Observation, int]:
        requests = 1
        while rng.random() < p["fastly_error_rate"]:
            if requests == ATTEMPTS:
                return Observation.error("fastly", self.name, "HTTP 429", observed_at=at), requests
            requests += 1
        tokens = ("unknown",) if rng.random() < p["fastly_unknown_rate"] else view.fastly.split()
        return fastly_observation(self.name, tokens, at), requests


def fastly_observation(name: str, tokens: tuple[str, ...] | list[str], at: datetime) -> Observation:
    """An answered Fastly status, ``found`` as ``lapsewatch.sources.fastly`` sets it."""
    found = True if "active" in tokens else False if "inactive" in tokens else None
    return Observation(
        "fastly",
        name,
        Outcome.ANSWERED,
        f"status {' '.join(tokens)}",
        found=found,
        status=tuple(tokens),
        observed_at=at,
    )


@functools.cache
def _is_parking(nameserver: str) -> bool:
    """As ``lapsewatch.sources.dns`` decides it, from the product's own list."""
    labels = nameserver.split(".")
    return any(".".join(labels[i:]) in PARKING_NAMESERVER_DOMAINS for i in range(len(labels)))


def _pick(rng: random.Random, shares: Mapping[str, float]) -> str:
    """One key, with probability proportional to its share."""
    total = sum(shares.values())
    x = rng.random() * total
    for key, share in shares.items():
        x -= share
        if x < 0:
            return key
    return list(shares)[-1]


def _tokens(nameservers: tuple[str, ...]) -> str:
    """Fastly's answer for a registered name (assumption: it sees aftermarket parking only)."""
    if not nameservers:
        return "undelegated"
    return "active parked marketed" if any(map(_is_parking, nameservers)) else "active"


class _Builder:
    """Draws one domain's lifecycle. ``d`` converts days to hours."""

    def __init__(
        self, rng: random.Random, p: Mapping[str, float], year: float, extra: random.Random
    ) -> None:
        self.rng, self.p, self.year = rng, p, year
        self.extra = extra
        """Mail hosts and DNS moves: drawn apart, so the lifecycles stay those of the seed."""

    def days(self, key: str) -> float:
        return self.p[key] * 24.0

    def uniform_days(self, low_key: str | float, high_key: str) -> float:
        low = self.days(low_key) if isinstance(low_key, str) else low_key * 24.0
        return self.rng.uniform(low, max(low, self.days(high_key)))

    def build(self, index: int) -> Domain:
        rng, p = self.rng, self.p
        tld = _pick(rng, {t: p[f"tld_share_{t}"] for t in ("gtld", "uk", "de", "nl")})
        registered = -rng.uniform(1.0, 15.0) * YEAR_HOURS
        expires = rng.uniform(0.0, self.year)
        has_dates = tld != "de"  # assumption: DENIC's RDAP shows no registration/expiry dates
        name = f"d{index}.{'com' if tld == 'gtld' else tld}"
        healthy = View(
            "ok",
            0,
            True,
            ("client transfer prohibited",),
            registered if has_dates else None,
            expires if tld in ("gtld", "uk") else None,
            OWNER_NS,
            "active",
            self._owner_mail(name),
        )
        timeline = Timeline()
        timeline.add(-1e12, healthy)
        domain = Domain(name, tld, "renewed", timeline)
        if rng.random() < p["lapse_rate"]:
            getattr(self, f"_lapse_{tld}")(domain, healthy, expires)
        else:
            self._renew(domain, healthy, expires)
        if domain.kind == "renewed" and rng.random() < p["transfer_rate"]:
            start = rng.uniform(0.0, self.year)
            domain.transfer = (start, start + self.days("transfer_pending_days"))
        if self.extra.random() < p["ns_change_rate"]:
            move_dns(domain, self.extra.uniform(0.0, self.year))
        return domain

    def _owner_mail(self, name: str) -> tuple[str, ...]:
        rng, p = self.extra, self.p
        x = rng.random()
        if x < p["mx_provider_share"]:
            hosts = PROVIDER_MX[rng.randrange(len(PROVIDER_MX))]
            return tuple(h.format(label=name.replace(".", "-")) for h in hosts)
        x -= p["mx_provider_share"]
        if x < p["mx_self_share"]:
            return (f"mail.{name}",)
        x -= p["mx_self_share"]
        if x < p["mx_third_party_share"]:
            pool = max(int(p["mx_third_party_pool"]), 1)
            host = mail_domain_name(_zipf(rng, pool))
            return (f"mx1.{host}", f"mx2.{host}")
        # No MX: mail goes to the domain's address (the implicit MX), the owner's web host.
        return (f"[203.0.113.{rng.randrange(1, 255)}]",)

    # Renewals -----------------------------------------------------------------

    def _renew(self, domain: Domain, healthy: View, expires: float) -> None:
        rng, p = self.rng, self.p
        renewed = replace(
            healthy, expires_at=None if healthy.expires_at is None else expires + YEAR_HOURS
        )
        if domain.tld in ("de", "nl"):
            return  # no dates shown: a renewal changes nothing anyone can see
        how = _pick(
            rng, {k: p[f"renew_{k}_share"] for k in ("early", "on_time", "autorenew", "late")}
        )
        if how == "autorenew" and domain.tld == "uk":
            how = "on_time"  # Nominet has no registry auto-renew
        if how == "early":
            domain.timeline.add(
                expires - self.uniform_days("renew_early_min_days", "renew_early_max_days"), renewed
            )
        elif how == "on_time":
            domain.timeline.add(expires - self.uniform_days(0.0, "renew_on_time_max_days"), renewed)
        elif how == "autorenew":
            paid = replace(renewed, phase="autorenew_paid", rdap_status=("auto renew period",))
            domain.timeline.add(expires, paid)
            domain.timeline.add(expires + self.days("autorenew_grace_days"), renewed)
        else:
            domain.kind = "renewed_late"
            back = expires + self.uniform_days(0.0, "renew_late_max_days")
            if domain.tld == "uk":
                self._uk_expired(domain, healthy, expires, until=back)
                domain.timeline.add(back, renewed)
            else:
                self._grace(domain, healthy, expires, until=back)
                grace_end = expires + self.days("autorenew_grace_days")
                if back < grace_end:
                    domain.timeline.add(back, replace(renewed, rdap_status=("auto renew period",)))
                domain.timeline.add(max(back, grace_end), renewed)
        # The run's tail may reach the next expiry: a renewing owner renews again, in time.
        again = expires + YEAR_HOURS - self.uniform_days(0.0, "renew_on_time_max_days")
        domain.timeline.add(
            max(again, domain.timeline.starts[-1]),
            replace(renewed, expires_at=expires + 2 * YEAR_HOURS),
        )

    # gTLD -----------------------------------------------------------------------

    def _grace(self, domain: Domain, healthy: View, expires: float, *, until: float) -> bool:
        """The registry auto-renews (expiry +1 year, ``auto renew period``); the registrar
        parks or holds the name a few days later. Returns whether it parks."""
        grace = replace(
            healthy,
            phase="grace",
            rdap_status=("auto renew period",),
            expires_at=expires + YEAR_HOURS,
        )
        domain.timeline.add(expires, grace)
        action = expires + self.uniform_days(0.0, "registrar_action_max_days")
        parks = self.rng.random() < self.p["registrar_parking_share"]
        if action < until:
            if parks:  # a parking page serves no mail (assumption): no MX, its own address
                held = replace(
                    grace,
                    nameservers=_REGISTRAR_EXPIRY_NS,
                    fastly="active",
                    mail_hosts=_REGISTRAR_PARKING_MAIL,
                )
            else:
                held = replace(
                    grace,
                    rdap_status=("client hold", "auto renew period"),
                    nameservers=(),
                    fastly="expiring",
                    mail_hosts=(),
                )
            domain.timeline.add(action, held)
            grace_end = expires + self.days("autorenew_grace_days")
            if grace_end < until:
                status = tuple(s for s in held.rdap_status if s != "auto renew period")
                domain.timeline.add(grace_end, replace(held, rdap_status=status))
        return parks

    def _lapse_gtld(self, domain: Domain, healthy: View, expires: float) -> None:
        rng, p = self.rng, self.p
        if rng.random() < p["early_deletion_share"]:
            domain.kind = "early_deletion"
            deleted = expires - self.uniform_days(0.0, "early_deletion_max_days")
            if deleted < 0:  # the lapse falls inside the run
                deleted = rng.uniform(0.0, expires)
            self._deletion(
                domain, healthy, deleted, expires, "redemption_days", "pending_delete_days"
            )
            return
        if rng.random() < p["auction_sold_share"]:
            domain.kind = "auction"
            push = (
                expires
                + self.days("auction_end_days")
                + self.uniform_days(0.0, "auction_push_max_days")
            )
            self._grace(domain, healthy, expires, until=push)
            status = (
                ("auto renew period",) if push < expires + self.days("autorenew_grace_days") else ()
            )
            nameservers = (
                _AFTERMARKET_NS if rng.random() < p["new_owner_parks_share"] else _NEW_OWNER_NS
            )
            bought = View(
                "new_owner",
                1,
                True,
                (*status, "client transfer prohibited"),
                healthy.registered_at,  # an auction keeps the registration: nothing shows it
                expires + YEAR_HOURS,
                nameservers,
                _tokens(nameservers),
                _new_owner_mail(domain.name, nameservers),
            )
            domain.timeline.add(push, bought)
            domain.takeovers.append(push)
            if status:
                grace_end = expires + self.days("autorenew_grace_days")
                domain.timeline.add(
                    grace_end, replace(bought, rdap_status=("client transfer prohibited",))
                )
            return
        domain.kind = "dropped"
        deleted = expires + self.uniform_days(
            "delete_after_expiry_min_days", "delete_after_expiry_max_days"
        )
        self._grace(domain, healthy, expires, until=deleted)
        self._deletion(domain, healthy, deleted, expires, "redemption_days", "pending_delete_days")

    def _deletion(
        self,
        domain: Domain,
        healthy: View,
        deleted: float,
        expires: float | None,
        redemption_key: str,
        pending_key: str | None,
    ) -> None:
        """Deleted at ``deleted``: redemption, pending delete, drop, maybe re-registration."""
        redemption = View(
            "redemption",
            0,
            True,
            ("redemption period",),
            healthy.registered_at,
            expires,  # a deletion during the grace reverses the auto-renew
            (),
            "undelegated deleting",
        )
        domain.timeline.add(deleted, redemption)
        t = deleted + self.days(redemption_key)
        if pending_key is not None:
            domain.timeline.add(
                t, replace(redemption, phase="pending_delete", rdap_status=("pending delete",))
            )
            t += self.days(pending_key)
        self._drop(domain, t)

    def _drop(self, domain: Domain, dropped: float) -> None:
        rng, p = self.rng, self.p
        domain.drop_at = dropped
        domain.timeline.add(
            dropped, View("available", 0, False, (), None, None, (), "undelegated inactive")
        )
        x = rng.random()
        if x < p["dropcatch_zero_delay_share"]:
            again = dropped
        elif x < p["dropcatch_zero_delay_share"] + p["rereg_first_day_share"]:
            again = dropped + rng.uniform(0.0, p["rereg_first_day_hours"])
        elif (
            x
            < p["dropcatch_zero_delay_share"] + p["rereg_first_day_share"] + p["rereg_later_share"]
        ):
            again = dropped + self.uniform_days(1.0, "rereg_later_max_days")
        else:
            return
        nameservers = (
            _AFTERMARKET_NS if rng.random() < p["new_owner_parks_share"] else _NEW_OWNER_NS
        )
        domain.timeline.add(
            again,
            View(
                "new_owner",
                2,
                True,
                ("client transfer prohibited",),
                None if domain.tld == "de" else again,
                again + YEAR_HOURS if domain.tld in ("gtld", "uk") else None,
                nameservers,
                _tokens(nameservers),
                _new_owner_mail(domain.name, nameservers),
            ),
        )
        domain.takeovers.append(again)

    # ccTLDs -----------------------------------------------------------------------

    def _uk_expired(self, domain: Domain, healthy: View, expires: float, *, until: float) -> None:
        """Nominet: no auto-renew, so the past expiry date shows; suspended after 30 days."""
        expired = replace(healthy, phase="expired")
        domain.timeline.add(expires, expired)
        suspend = expires + self.days("uk_suspend_after_expiry_days")
        if suspend < until:
            domain.timeline.add(
                suspend,
                replace(
                    expired,
                    phase="suspended",
                    rdap_status=("server hold",),
                    nameservers=(),
                    fastly="expiring",
                    mail_hosts=(),
                ),
            )

    def _lapse_uk(self, domain: Domain, healthy: View, expires: float) -> None:
        domain.kind = "dropped"
        cancelled = expires + self.days("uk_cancel_after_expiry_days")
        self._uk_expired(domain, healthy, expires, until=cancelled)
        pending = View(
            "pending_delete",
            0,
            True,
            ("pending delete",),
            healthy.registered_at,
            expires,
            (),
            "undelegated deleting",
        )
        domain.timeline.add(cancelled, pending)
        self._drop(domain, cancelled + self.days("uk_pending_delete_days"))

    def _lapse_de(self, domain: Domain, healthy: View, expires: float) -> None:
        """DENIC: the registrar deletes at any time; 30 days' RGP, then free."""
        domain.kind = "dropped"
        self._deletion(domain, healthy, expires, None, "de_redemption_days", None)

    def _lapse_nl(self, domain: Domain, healthy: View, expires: float) -> None:
        """SIDN: cancelled, 40 days' quarantine (assumed shown as ``pending delete``), then free."""
        domain.kind = "dropped"
        quarantine = View(
            "quarantine",
            0,
            True,
            ("pending delete",),
            healthy.registered_at,
            None,
            (),
            "undelegated deleting",
        )
        domain.timeline.add(expires, quarantine)
        self._drop(domain, expires + self.days("nl_quarantine_days"))


def _new_owner_mail(name: str, nameservers: tuple[str, ...]) -> tuple[str, ...]:
    """A buyer who parks the name for sale serves no mail (no MX, the parking page's
    address); one who uses it runs its own."""
    return _AFTERMARKET_MAIL if any(map(_is_parking, nameservers)) else (f"mail.{name}",)


def _zipf(rng: random.Random, n: int) -> int:
    """A rank in ``[0, n)`` with probability proportional to ``1 / (rank + 1)``."""
    x = rng.random() * sum(1.0 / k for k in range(1, n + 1))
    for k in range(1, n + 1):
        x -= 1.0 / k
        if x < 0:
            return k - 1
    return n - 1


def mail_domain_name(rank: int) -> str:
    """The registrable domain of the ``rank``-th third-party mail host of the pool."""
    return f"mailhost{rank}.net"


def move_dns(domain: Domain, at: float) -> None:
    """The owner moves DNS hosting at ``at``, if the domain is healthy then: every later
    segment served by the owner's name servers is served by :data:`MOVED_NS` instead
    (mail hosts unchanged: the zone moves with its records)."""
    timeline = domain.timeline
    if not timeline.at(at).healthy:
        return
    starts: list[float] = []
    views: list[View] = []
    for i, (start, view) in enumerate(zip(timeline.starts, timeline.views, strict=True)):
        stop = timeline.starts[i + 1] if i + 1 < len(timeline.starts) else float("inf")
        own = view.owner == 0 and view.nameservers == OWNER_NS
        if own and start < at < stop:
            starts += [start, at]
            views += [view, replace(view, nameservers=MOVED_NS)]
        else:
            starts.append(start)
            views.append(replace(view, nameservers=MOVED_NS) if own and start >= at else view)
    timeline.starts, timeline.views = starts, views
    domain.ns_moved_at = at


def healthy_mail_domain(name: str) -> Domain:
    """A third-party mail host's own domain: registered, paid years ahead, unchanging."""
    timeline = Timeline()
    timeline.add(
        -1e12,
        View(
            "ok",
            0,
            True,
            ("client transfer prohibited",),
            -10 * YEAR_HOURS,
            5 * YEAR_HOURS,
            (f"ns1.{name}", f"ns2.{name}"),
            "active",
            (f"mx1.{name}", f"mx2.{name}"),
        ),
    )
    return Domain(name, "gtld", "mail_host", timeline)


def _lapsing_mail_domains(
    world: World, params: Mapping[str, float], seed: int, year_hours: float
) -> None:
    """The pool's mail-host domains that lapse in the year (gTLD path: grace, holds,
    auctions, early deletions, drops), drawn on their own random streams so that the
    owners' domains stay those of the seed; the others stay healthy."""
    rng = random.Random(seed * 104_729 + 3)
    builder = _Builder(random.Random(seed * 15_485_863 + 5), params, year_hours, rng)
    for rank in range(max(int(params["mx_third_party_pool"]), 1)):
        if rng.random() >= params.get("mail_host_lapse_rate", 0.0):
            continue
        name = mail_domain_name(rank)
        expires = rng.uniform(0.0, year_hours)
        healthy = replace(healthy_mail_domain(name).timeline.views[0], expires_at=expires)
        timeline = Timeline()
        timeline.add(-1e12, healthy)
        domain = Domain(name, "gtld", "dropped", timeline)
        builder._lapse_gtld(domain, healthy, expires)
        world.mail_domains[name] = domain


def mail_domain_of(host: str) -> str | None:
    """The pool domain a third-party mail host sits on (``mx1.mailhost3.net``), if any."""
    _, _, rest = host.partition(".")
    return rest if rest.startswith("mailhost") and rest.endswith(".net") else None


@dataclass
class World:
    domains: list[Domain]
    addresses: list[Address]
    mail_domains: dict[str, Domain] = field(default_factory=dict)
    """The third-party mail hosts' domains, by name (checked when a domain's MX names them)."""

    def mail_domain(self, name: str) -> Domain:
        """The domain ``name`` as a mail host's (healthy; any name not drawn is too)."""
        found = self.mail_domains.get(name)
        if found is None:
            found = self.mail_domains[name] = healthy_mail_domain(name)
        return found


def build_world(
    params: Mapping[str, float], *, domains: int, seed: int, year_hours: float = YEAR_HOURS
) -> World:
    """``domains`` custom domains with their addresses, and the free-provider addresses
    that a per-address checker also checks."""
    rng = random.Random(seed)
    builder = _Builder(rng, params, year_hours, random.Random(seed * 7919 + 17))
    world = World([], [])
    extra = 1.0 / max(params["addresses_per_domain_mean"], 1.0)
    for index in range(domains):
        domain = builder.build(index)
        count = 1
        while rng.random() > extra:  # geometric, mean addresses_per_domain_mean
            count += 1
        earliest = domain.timeline.views[0].registered_at
        for _ in range(count):
            low = -3 * YEAR_HOURS if earliest is None else max(earliest, -3 * YEAR_HOURS)
            domain.addresses.append(len(world.addresses))
            world.addresses.append(Address(index, rng.uniform(low, -24.0 * 30)))
        world.domains.append(domain)
    _lapsing_mail_domains(world, params, seed, year_hours)
    custom = len(world.addresses)
    share = min(params["free_provider_share"], 0.99)
    for _ in range(round(custom * share / (1.0 - share))):
        world.addresses.append(Address(-1, rng.uniform(-3 * YEAR_HOURS, -24.0 * 30)))
    return world
