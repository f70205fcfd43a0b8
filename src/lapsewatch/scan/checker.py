"""Ask the status sources about each distinct domain once, with the cache in front.

The scan's observations are the same as ``lapsewatch domain``'s (one shared
set of sources, each under the cycle's rate limits: per server with
``LAPSEWATCH_PACE=server``, the default; see :func:`_pacing`); only the verdict
is decided later, per package, because the release date of each package is
what the re-registration check compares with. A scan is one-shot and often offline, so
where the check cycle would rather wait and retry, it keeps quick and honest:

* a source that has failed for its first few domains without ever answering is
  not asked again in this scan (offline, firewalled): the rest are ``unknown`` at
  once instead of each waiting for its own timeouts;
* the RDAP bootstrap is loaded first, and an unreachable one leaves RDAP out;
* DNS servers are first sent one trivial query on a connected socket, which
  learns of a closed port at once (UDP has no connection to refuse otherwise):
  when none answers, DNS is left out instead of timing out once per domain;
* with the system's resolvers, DNS is first asked about names that certainly
  exist; a resolver that calls them non-existent (some offline sandboxes and
  filtering resolvers answer NXDOMAIN to everything) would make every domain
  look "available", so DNS is left out of that scan, with a note;
* observations are cached only when some source answered: a domain nobody could
  check is asked again next time rather than remembered as unknown.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import dns.message
import dns.rdatatype

from lapsewatch.config import Settings
from lapsewatch.dates import parse_datetime
from lapsewatch.mail_hosts import mail_host_domains
from lapsewatch.pace import ServerPacer, open_pacer
from lapsewatch.pace.limited import Limited
from lapsewatch.scan.cache import DiskCache
from lapsewatch.sources import Observation, Outcome, Source, observe_relevant, open_sources
from lapsewatch.sources.bootstrap import BootstrapError
from lapsewatch.sources.dns import DnsSource, system_nameservers
from lapsewatch.sources.rdap import RdapSource
from lapsewatch.verdict import Verdict, decide

__all__ = ["DomainChecks", "check_scan_domains", "observation_from_dict"]

CACHE_NAMESPACE = "domains"
BREAKER_THRESHOLD = 3
"""Failures, without a single answer, after which a source is given up for the scan."""
PROBE_TIMEOUT = 2.0
"""Seconds a DNS server gets to answer the trivial probe query (a root NS lookup)."""
UNKNOWN_TTL = 3600.0
"""An ``unknown`` that some source answered is kept at most an hour (it is retried sooner)."""
_EVIDENCE_KEPT = 2000
"""Characters of raw evidence kept in the cache: the report shows summaries only."""


@dataclass(frozen=True)
class DomainChecks:
    """Observations per domain, and how they were obtained."""

    observations: Mapping[str, tuple[Observation, ...]]
    asked: int
    """Domains the sources were asked about in this scan."""
    cached: int
    """Domains answered from the cache."""
    notes: tuple[str, ...] = ()


def observation_from_dict(data: Any) -> Observation:
    """Inverse of :meth:`Observation.to_dict`; ``ValueError`` on a malformed record."""
    if not isinstance(data, dict):
        raise ValueError("not an observation record")

    def when(key: str) -> Any:
        value = data.get(key)
        return parse_datetime(value) if isinstance(value, str) else None

    try:
        return Observation(
            source=str(data["source"]),
            domain=str(data["domain"]),
            outcome=Outcome(data["outcome"]),
            detail=str(data["detail"]),
            found=data.get("found") if isinstance(data.get("found"), bool) else None,
            status=tuple(str(s) for s in data.get("status") or ()),
            registered_at=when("registered_at"),
            expires_at=when("expires_at"),
            last_changed_at=when("last_changed_at"),
            nameservers=tuple(str(n) for n in data.get("nameservers") or ()),
            mail_hosts=(
                tuple(str(h) for h in data["mail_hosts"])
                if isinstance(data.get("mail_hosts"), list)
                else None
            ),
            evidence=str(data.get("evidence") or ""),
            retry_after=None,
            observed_at=when("observed_at") or parse_datetime("1970-01-01"),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed observation: {exc}") from None


class _Breaker(Source):
    """Stops asking a source that has failed for every domain so far.

    Until the source has answered once, at most ``BREAKER_THRESHOLD`` domains are
    in flight (a slow start): when it is unreachable, only those few wait for
    their timeouts and retries, and every other domain is answered at once.
    After the first answer the full concurrency is used.
    """

    def __init__(self, inner: Source, concurrency: int) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # per instance, mirrors the inner source
        self._slots = asyncio.Semaphore(concurrency)
        self._state = asyncio.Condition()
        self._probing = 0
        self._failures = 0
        self._answered = False
        self._open: str | None = None

    def _may_go(self) -> bool:
        # A failed probe is not replaced: three failures end the probing either way.
        probes_left = BREAKER_THRESHOLD - self._probing - self._failures
        return self._answered or self._open is not None or probes_left > 0

    async def observe(self, domain: str) -> Observation:
        async with self._slots:
            async with self._state:
                await self._state.wait_for(self._may_go)
                if self._open is not None:
                    return Observation.error(self.name, domain, self._open)
                probing = not self._answered
                self._probing += probing
            observation: Observation | None = None
            try:
                observation = await self.inner.observe(domain)
            finally:
                async with self._state:
                    self._probing -= probing
                    if observation is not None:
                        self._record(observation)
                    self._state.notify_all()
            return observation

    def _record(self, observation: Observation) -> None:
        if observation.outcome is Outcome.ANSWERED:
            self._answered = True
        elif observation.outcome is Outcome.ERROR and not self._answered:
            self._failures += 1
            if self._failures >= BREAKER_THRESHOLD and self._open is None:
                self._open = (
                    f"not asked: {self.name} failed for its first {self._failures} domains "
                    f"in this scan ({observation.detail})"
                )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Down(Source):
    """Stands in for a source found unusable before the scan: every domain gets its reason."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name  # type: ignore[misc]  # per instance, mirrors the replaced source
        self._why = why

    async def observe(self, domain: str) -> Observation:
        return Observation.error(self.name, domain, self._why)


def _cache_key(domain: str, settings: Settings) -> str:
    """Answers belong to a configuration: another world or resolver may say otherwise."""
    return json.dumps(
        [
            domain,
            list(settings.sources),
            settings.rdap_bootstrap_url,
            [list(ns) for ns in settings.dns_nameservers],
            settings.whois_servers,
            settings.fastly_url if settings.fastly_key else None,
        ]
    )


def _cache_value(observations: Iterable[Observation]) -> list[dict[str, Any]]:
    records = []
    for observation in observations:
        record = observation.to_dict()
        record["evidence"] = observation.evidence[:_EVIDENCE_KEPT]
        records.append(record)
    return records


def _from_cache(cache: DiskCache, key: str) -> tuple[Observation, ...] | None:
    value = cache.get(CACHE_NAMESPACE, key)
    if not isinstance(value, list):
        return None
    try:
        return tuple(observation_from_dict(item) for item in value)
    except ValueError:
        return None


class _Probe(asyncio.DatagramProtocol):
    def __init__(self, answer: asyncio.Future[bool]) -> None:
        self.answer = answer

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(True)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_result(False)  # ICMP port unreachable, network unreachable


async def _answers(host: str, port: int, timeout: float) -> bool:
    """Whether a DNS server answers anything at all (REFUSED counts) within ``timeout``."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bool] = loop.create_future()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Probe(answer), remote_addr=(host, port)
        )
    except OSError:
        return False
    try:
        transport.sendto(dns.message.make_query(".", dns.rdatatype.NS).to_wire())
        return await asyncio.wait_for(answer, timeout)
    except (TimeoutError, OSError):
        return False
    finally:
        transport.close()


async def _dns_unreachable(settings: Settings) -> str | None:
    """A note when no configured (or system) DNS server answers at all, else ``None``."""
    servers = settings.dns_nameservers or system_nameservers()
    if not servers:
        return None
    timeout = min(settings.timeout, PROBE_TIMEOUT)
    answered = await asyncio.gather(*(_answers(host, port, timeout) for host, port in servers))
    if any(answered):
        return None
    shown = ", ".join(f"{host}:{port}" for host, port in servers)
    return f"no DNS server answered a test query ({shown}): DNS is not used in this scan"


async def _usable(source: Source, settings: Settings, notes: list[str]) -> Source:
    """The source itself, or a stand-in when a quick first look shows it cannot work."""
    why: str | None = None
    if isinstance(source, RdapSource):
        try:
            await source.bootstrap()
        except BootstrapError as exc:
            why = f"RDAP bootstrap unavailable ({exc}): RDAP is not used in this scan"
    elif isinstance(source, DnsSource):
        # A resolver that denies everything is caught by the DNS source itself.
        why = await _dns_unreachable(settings)
    if why is None:
        return source
    notes.append(why)
    return _Down(source.name, f"not asked: {why}")


@asynccontextmanager
async def _pacing(settings: Settings, notes: list[str]) -> AsyncIterator[ServerPacer | None]:
    """The cycle's limits (``LAPSEWATCH_PACE``): with ``server``, a per-server pacer
    (pins, caps and shared Redis buckets as configured; nothing read from or saved to
    a store); with ``source``, ``None``: one rate per source. Another value is paced
    per server, with a note (a scan reports, it does not stop on a setting it does
    not need).

    A scan waits out a ``Retry-After`` of up to ``LAPSEWATCH_MAX_RETRY_AFTER`` (it has
    no later cycle to leave the domain to), or ``LAPSEWATCH_PACE_MAX_WAIT`` if longer."""
    if settings.pace == "source":
        yield None
        return
    if settings.pace != "server":
        notes.append(
            f"LAPSEWATCH_PACE={settings.pace!r} is neither server nor source: paced per server"
        )
    patient = replace(settings, pace_max_wait=max(settings.pace_max_wait, settings.max_retry_after))
    async with open_pacer(patient, None, save=False) as pacer:
        yield pacer


async def check_scan_domains(
    domains: Sequence[str],
    settings: Settings,
    *,
    cache: DiskCache | None = None,
    on_done: Callable[[str], None] = lambda _domain: None,
    in_flight: int | None = None,
) -> DomainChecks:
    """Observations for every domain (each asked once), from the cache or the sources.

    The domains of their mail hosts (MX) on other registrable domains, providers
    left out, are observed too, each once, and are in the result beside them
    (``findings`` decides ``mail_host_lapsed`` from them); ``on_done`` is not
    called for those."""
    found: dict[str, tuple[Observation, ...]] = {}
    to_ask: list[str] = []
    wanted = dict.fromkeys(domains)
    mail_domains: list[str] = []

    def follow(domain: str, observations: tuple[Observation, ...]) -> list[str]:
        new = [
            d
            for _, d in mail_host_domains(domain, observations)
            if d not in found and d not in wanted and d not in mail_domains
        ]
        mail_domains.extend(new)
        return new

    for domain in wanted:
        cached = _from_cache(cache, _cache_key(domain, settings)) if cache else None
        if cached is None:
            to_ask.append(domain)
        else:
            found[domain] = cached
            on_done(domain)
    for domain in list(found):
        follow(domain, found[domain])
    for domain in list(mail_domains):
        cached = _from_cache(cache, _cache_key(domain, settings)) if cache else None
        if cached is None:
            to_ask.append(domain)
        else:
            found[domain] = cached
    cached_count = sum(1 for d in found if d in wanted)
    if not to_ask:
        return DomainChecks(found, 0, cached_count)

    notes: list[str] = []
    async with open_sources(settings) as opened, _pacing(settings, notes) as pacer:
        sources = [await _usable(source, settings, notes) for source in opened]
        guarded = [
            s
            if isinstance(s, _Down)
            else _Breaker(
                Limited(
                    s,
                    rate=settings.rates.get(s.name, 10.0),
                    concurrency=settings.concurrency,
                    pacer=pacer,
                    cap=settings.source_caps.get(s.name),
                ),
                settings.concurrency,
            )
            for s in sources
        ]
        slots = asyncio.Semaphore(in_flight or settings.concurrency * 2)

        follow_ups: list[asyncio.Task[None]] = []

        async def one(domain: str) -> None:
            async with slots:
                observations = await observe_relevant(guarded, domain, settings.domain_deadline)
            found[domain] = observations
            if domain in wanted:  # a mail-host domain's own mail hosts are not followed
                follow_ups.extend(asyncio.create_task(one(d)) for d in follow(domain, observations))
            if cache is not None and any(o.answered for o in observations):
                verdict = decide(domain, observations, now=observations[0].observed_at).verdict
                ttl = min(cache.ttl, UNKNOWN_TTL) if verdict is Verdict.UNKNOWN else None
                cache.put(
                    CACHE_NAMESPACE, _cache_key(domain, settings), _cache_value(observations), ttl
                )
            if domain in wanted:
                on_done(domain)

        await asyncio.gather(*(one(domain) for domain in to_ask))
        while follow_ups:
            batch, follow_ups[:] = list(follow_ups), []
            await asyncio.gather(*batch)
    asked = sum(1 for d in to_ask if d in wanted)
    return DomainChecks(found, asked, cached_count, tuple(notes))
