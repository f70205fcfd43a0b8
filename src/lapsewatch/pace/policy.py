"""The learning rule (AIMD with a slow start) and one server's bucket, in this process.

A server's rate starts conservative (``start``) or where the store says the last cycle
ended. While the rate is the limit (the server's queue held by it for half an epoch,
``pacer.BUSY_SHARE``) and its answers come back clean, the rate grows once per
``epoch``: by half each time (*slow start*) until the server first says "too many
requests", then back quickly towards 90% of the rate that was refused, then by 1% an
epoch (probing whether the server now allows more). A 429, a ``Retry-After``, a DNS
``REFUSED``, a WHOIS quota text, a burst of timeouts or a jump in latency cuts the rate
to 70% (to 90% for a refusal near the known ceiling; at most once a ``cooldown``, and
never for a refused request sent before the last cut, so a volley of refusals to
requests already sent counts once), and the rate that was refused is remembered as the
server's *ceiling* (a refusal only: slow answers and timeouts cut the rate but set no
ceiling). ``Retry-After`` also pauses every request to that server until it has passed.

The bucket is GCRA (virtual scheduling): each request reserves the next slot,
``1 / rate`` after the previous one, and is told how long to sleep. A changed rate
applies from the next reservation on, nothing is reset. After an idle spell a
burst of ``burst`` seconds' worth goes out at once (0.1 s: a server's own bucket
usually holds a second's worth, so ours never tips it over by bunching).

:mod:`lapsewatch.pace.shared` runs the same rule in Redis (Lua), so that several
processes share one bucket and one learned rate per server.
"""

from __future__ import annotations

from dataclasses import dataclass

from lapsewatch.source_catalog import CATALOG

__all__ = [
    "START_BY_SOURCE",
    "Learned",
    "Policy",
    "ServerBucket",
    "cut_rate",
    "raised_rate",
    "start_for",
]

START_BY_SOURCE: dict[str, float] = {
    s.name: s.pace_start for s in CATALOG if s.pace_start is not None
}
"""Where a server never seen starts, by source (each source's catalog entry says, and
why), unless ``LAPSEWATCH_PACE_START`` sets one rate for all; other sources start at
``Policy.start``."""


@dataclass(frozen=True)
class Policy:
    """The numbers of the learning rule; the defaults are what the bench measured."""

    start: float = 10.0
    """Requests/s for a server never seen (nothing in the store, no pin), unless its
    source has its own in ``starts``."""
    starts: tuple[tuple[str, float], ...] = ()
    """``(source, start)`` pairs overriding ``start`` for that source's servers."""
    minimum: float = 0.5
    maximum: float = 1000.0
    """Learned rates stay within these (a pin does not)."""
    epoch: float = 1.0
    """Seconds between two increases (across all processes sharing a server)."""
    cooldown: float = 1.0
    """Seconds after a cut during which further refusals cut no more."""
    slow_start: float = 1.5
    """Factor per epoch until the first refusal."""
    decrease: float = 0.7
    """Factor of a cut."""
    near_decrease: float = 0.9
    """Factor of a cut for a refusal above 90% of the known ceiling: the limit is
    known and only the last probe went past it (a cut to 70% there cost 1.5 s of the
    big registry's quota at every refusal, measured in the bench's patchwork world)."""
    recover: float = 0.25
    """Below 90% of the ceiling: this share of the gap is closed per epoch."""
    probe: float = 0.01
    """Above 90% of the ceiling (or as the least step): growth per epoch."""
    burst: float = 0.1
    """Seconds' worth of requests that may go out at once after an idle spell."""


@dataclass(frozen=True)
class Learned:
    """What is known of one server: kept in the store between cycles."""

    rate: float
    ceiling: float | None = None
    """The last rate the server refused (``None``: it never refused)."""
    pinned: bool = False


def start_for(policy: Policy, source: str) -> float:
    """The rate a server of ``source`` never seen starts at."""
    return dict(policy.starts).get(source, policy.start)


def raised_rate(rate: float, ceiling: float | None, policy: Policy) -> float:
    """The rate after one clean, busy epoch."""
    if ceiling is None:
        grown = rate * policy.slow_start
    elif rate < 0.9 * ceiling:
        grown = rate + max(policy.recover * (0.9 * ceiling - rate), policy.probe * rate)
    else:
        grown = rate * (1 + policy.probe)
    return min(policy.maximum, max(policy.minimum, grown))


def cut_rate(rate: float, policy: Policy, *, near: bool = False) -> float:
    """The rate after a cut; ``near``: a refusal above 90% of the known ceiling."""
    return max(policy.minimum, rate * (policy.near_decrease if near else policy.decrease))


class ServerBucket:
    """One server's bucket and learned rate in this process (not thread-safe: one event
    loop). ``now`` is ``time.monotonic()``, passed in so tests control the clock."""

    def __init__(self, learned: Learned, policy: Policy, *, pinned: float | None = None) -> None:
        self.policy = policy
        self.rate = pinned if pinned is not None else learned.rate
        self.ceiling = learned.ceiling
        self.pinned = pinned
        self.tat = 0.0
        """The theoretical arrival time of the next request (GCRA)."""
        self.paused_until = 0.0
        self.last_cut = -1e18
        self.last_change = -1e18

    def reserve(self, now: float, horizon: float) -> tuple[bool, float]:
        """``(reserved, seconds to wait)``: the next slot is reserved when it is at most
        ``horizon`` seconds away (else the caller asks again later, when a changed rate
        may have brought it nearer)."""
        slot = max(self.tat, now - self.policy.burst, self.paused_until)
        wait = max(0.0, slot - now)
        if wait > horizon:
            return False, wait
        self.tat = slot + 1.0 / self.rate
        return True, wait

    def refused(self, now: float, retry_after: float | None, sent: float | None = None) -> None:
        """The server said "too many requests": pause for ``retry_after``, cut the rate,
        and remember the refused rate as the ceiling.

        ``sent``: when the refused request went out. One sent before the last cut was
        sent at the rate before it, so it says nothing of the rate now and cuts no
        more: refusals still arriving from a backlog sent at the old rate cut a server
        three times in two seconds, to a ceiling 20% under its quota, from which it
        crept back at 1% a second (measured in the bench's patchwork world)."""
        if retry_after:
            self.paused_until = max(self.paused_until, now + retry_after)
        self.cut(now, refused=True, stale=sent is not None and sent < self.last_cut)

    def cut(self, now: float, *, refused: bool = False, stale: bool = False) -> None:
        """Slow down. Only a refusal sets the ceiling: slow answers or timeouts may be
        our own busy event loop, not the server's quota, and a ceiling set from them
        held a server far below its quota for the rest of a cycle (measured)."""
        if self.pinned is not None:
            return
        if stale or now - self.last_cut < self.policy.cooldown:
            if refused and self.ceiling is None:  # refused just after a cut for slowness
                self.ceiling = self.rate / self.policy.decrease  # the rate that was refused
            return
        # Strictly above: right after a gentle cut the rate is 90% of the ceiling, and a
        # refusal there means the limit has moved down (a hard cut again).
        near = refused and self.ceiling is not None and self.rate > 0.9 * self.ceiling
        if refused:
            self.ceiling = self.rate
        self.rate = cut_rate(self.rate, self.policy, near=near)
        self.last_cut = self.last_change = now

    def raise_(self, now: float) -> None:
        """One clean, busy epoch: grow (at most once per epoch)."""
        if self.pinned is not None or now - self.last_change < self.policy.epoch:
            return
        self.rate = raised_rate(self.rate, self.ceiling, self.policy)
        self.last_change = now

    def learned(self) -> Learned:
        return Learned(self.rate, self.ceiling, self.pinned is not None)
