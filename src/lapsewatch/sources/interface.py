"""The one interface every status source implements (what it returns, an
:class:`~lapsewatch.observation.Observation`, is defined in the pure core).

A source answers one question — what does it know about this registrable
domain right now — as an :class:`Observation`. It never raises for a failed
lookup: an error or a skip is an observation too, carrying its reason, so the
verdict can tell "the source said so" from "the source could not say".
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from lapsewatch.observation import EVIDENCE_LIMIT, Observation, Outcome, truncate

__all__ = [
    "EVIDENCE_LIMIT",
    "Deadline",
    "Observation",
    "Outcome",
    "Pacer",
    "Source",
    "SourceError",
    "failure",
    "guarded_observe",
    "observe_relevant",
    "relevant",
    "truncate",
]

log = logging.getLogger(__name__)


class SourceError(Exception):
    """Base class for a source that cannot work at all (bad configuration, no bootstrap)."""


class Pacer(Protocol):
    """A rate limiter that sees every request a source puts on the wire, retries included.

    ``server`` names the server the request goes to (an RDAP or Fastly base URL's
    ``host:port``, a resolver's or WHOIS server's ``host:port``): real registries
    limit per server, so a limiter may pace each one on its own. ``""``: unknown.
    """

    async def request(self, server: str = "") -> None:
        """Wait until one more request to ``server`` may go out (rate limit, pause)."""

    def refused(self, retry_after: float | None, server: str = "") -> None:
        """``server`` said "too many requests" (HTTP 429, DNS REFUSED, a WHOIS quota
        text); ``retry_after`` seconds, when it said how long, pause requests to it."""

    def timed_out(self, server: str = "") -> None:
        """The last request to ``server`` got no answer in time: a retry to it within
        the same observation may be refused (the domain is checked again later)."""


class Source(ABC):
    """A domain status source. Implementations must not touch the store."""

    name: ClassVar[str]
    paces_requests: ClassVar[bool] = False
    """Whether :meth:`observe` calls :attr:`pacer` before every request it sends (so a
    limiter must not count the observation itself as one request)."""
    pacer: Pacer | None = None
    """Set by a rate limiter (``lapsewatch.pace.limited.Limited``) on a source that
    ``paces_requests``."""

    @abstractmethod
    async def observe(self, domain: str) -> Observation:
        """Observe one registrable (ASCII) domain; never raise for a failed lookup."""

    async def observe_with(self, domain: str, *, mail_hosts: bool = True) -> Observation:
        """:meth:`observe`, told whether this check reads the domain's mail hosts (its
        MX; ``False``: the caller has them stored). Only a source that reads them
        (DNS) listens; a wrapper passes it on."""
        return await self.observe(domain)

    async def relevant(self, domain: str) -> bool:
        """Whether this source is to be asked about ``domain`` at all (WHOIS: only where
        the TLD has no RDAP). An irrelevant source leaves no observation behind."""
        return True

    async def observe_many(self, domains: Iterable[str]) -> list[Observation]:
        """Observe several domains concurrently; override where a batch API exists."""
        return list(await asyncio.gather(*(self.observe(d) for d in domains)))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the source holds (connections)."""


@dataclass(frozen=True)
class Deadline:
    """The end of one domain's whole check: every source asked about it (whether it
    applies, each request and retry) and its mail-host domains, ``seconds`` long,
    ending at event-loop time ``at``. One per domain check, shared by all its parts."""

    seconds: float
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now (call inside the event loop)."""
        return cls(seconds, asyncio.get_running_loop().time() + seconds)

    @property
    def missed(self) -> str:
        """The reason given for what did not finish in time."""
        return f"no answer within the domain deadline of {self.seconds:g} s"


def _deadline(deadline: float | Deadline) -> Deadline:
    return deadline if isinstance(deadline, Deadline) else Deadline.after(deadline)


async def guarded_observe(
    source: Source, domain: str, deadline: float | Deadline, *, mail_hosts: bool = True
) -> Observation:
    """``source.observe(domain)`` that always returns, by ``deadline`` (a :class:`Deadline`
    shared with the rest of the domain's check, or seconds from now).

    Sources promise never to raise, but one hostile answer that slips past a
    source's own handling (or a bug) must stay that domain's error: it becomes
    an ``error`` observation, logged with the domain, and the domain is retried
    with backoff like any other failure. Only cancellation goes through.
    ``mail_hosts``: see :meth:`Source.observe_with`.
    """
    deadline = _deadline(deadline)
    observation = await _guarded(source, domain, deadline, ask_first=False, mail_hosts=mail_hosts)
    assert observation is not None  # only a source asked whether it applies drops out
    return observation


async def _guarded(
    source: Source, domain: str, deadline: Deadline, *, ask_first: bool, mail_hosts: bool = True
) -> Observation | None:
    """The guarded observation; with ``ask_first``, ``None`` when the source does not
    apply to ``domain`` (:func:`relevant`, asked under the same deadline)."""
    scope = asyncio.timeout_at(deadline.at)
    try:
        async with scope:
            if ask_first and not await relevant(source, domain):
                return None
            return await source.observe_with(domain, mail_hosts=mail_hosts)
    except TimeoutError as exc:
        if scope.expired():
            log.warning("%s: %s: %s", domain, source.name, deadline.missed)
            return Observation.error(source.name, domain, deadline.missed)
        return _failed(source.name, domain, exc)
    except Exception as exc:
        return _failed(source.name, domain, exc)


def _failed(source: str, domain: str, exc: BaseException) -> Observation:
    """A source's exception as its error observation, logged with the domain (the
    traceback at debug level: a log line, not a traceback at an operator)."""
    log.warning("%s: %s failed: %s: %s", domain, source, type(exc).__name__, exc)
    log.debug("%s: %s failed", domain, source, exc_info=exc)
    return Observation.error(source, domain, failure(exc))


def failure(exc: BaseException) -> str:
    """An exception in one line, for an observation's detail or a reason."""
    return f"check failed: {type(exc).__name__}: {str(exc)[:200]}"


def _innermost(source: Source) -> Source:
    """The source behind wrappers (rate limiters, breakers), which keep it in ``inner``."""
    seen = 0
    while isinstance(inner := getattr(source, "inner", None), Source) and seen < 8:
        source, seen = inner, seen + 1
    return source


async def relevant(source: Source, domain: str) -> bool:
    """:meth:`Source.relevant` of the source behind any wrapper; a failure means relevant."""
    try:
        return await _innermost(source).relevant(domain)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("%s: %s could not tell whether it applies: %s", domain, source.name, exc)
        return True


async def observe_relevant(
    sources: Iterable[Source], domain: str, deadline: float | Deadline, *, mail_hosts: bool = True
) -> tuple[Observation, ...]:
    """Every relevant source's guarded observation of ``domain``, asked at once, all by
    one ``deadline`` (a :class:`Deadline`, or seconds from now): whether a source
    applies is asked under it too. ``mail_hosts``: see :meth:`Source.observe_with`."""
    deadline = _deadline(deadline)
    asked = await asyncio.gather(
        *(_guarded(s, domain, deadline, ask_first=True, mail_hosts=mail_hosts) for s in sources)
    )
    return tuple(o for o in asked if o is not None)
