"""The end of a run: a request still out long after its server usually answers is cut.

Once a run has no domain left to start (its due list, or a Celery chunk, is used up),
what is still open is its last domains. Most answer within their server's usual time;
a few hang (a server that never answers, a retry's backoff) and would hold the whole
run, or chunk, until the request timeout (5 s by default) for nothing but an error.
So, while the run drains, an observation still waiting on a server ``TAIL_FACTOR``
times that server's usual answer time (at least ``TAIL_MIN``) after its first request
to it (retries after an error answer included) is cut short: it becomes an ``error``
observation, as a timeout would, and the schedule checks that domain again later
(backoff). Nothing is decided from a cut: it is doubt. A dangerous verdict of the
domain's other sources, which the cut answer might have contradicted (the registry's
record of a domain on hold, against two sources that see no delegation), does not act
at once: a later check must confirm it (``Observation.cut``, ``verdict.decide``).

Not cut: a request still waiting for its server's slot (that wait is the run's real
work), and any request to a server that has not answered this run often enough to have
a usual time (a run of one domain waits for its answer as before).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from lapsewatch.observation import NOT_WAITED

__all__ = ["TAIL_FACTOR", "TAIL_MIN", "Stragglers", "Watched"]

log = logging.getLogger(__name__)

TAIL_FACTOR = 10.0
"""A request out this many times its server's usual answer time is a straggler."""
TAIL_MIN = 1.0
"""Seconds a request is given at least, however fast its server usually answers."""
TICK = 0.1
"""Seconds between two looks at the open observations while the run drains."""


@dataclass(eq=False)
class Watched:
    """One observation in progress, and why it was cut, if it was."""

    scope: asyncio.Timeout
    out: Callable[[float], tuple[str, float] | None]
    """``(server, seconds)`` it has been out at that time, asking ``server`` last
    (``None``: not on the wire, waiting for a slot or not started)."""
    cut: str | None = field(default=None)


class Stragglers:
    """The open observations of one checker, and the cut of the slow ones as it drains.

    ``usual(server)`` is the server's usual answer time in seconds (``None``: not known
    yet); ``clock`` is the clock the observations' request times were read on."""

    def __init__(self, usual: Callable[[str], float | None], clock: Callable[[], float]) -> None:
        self._usual = usual
        self._clock = clock
        self._open: set[Watched] = set()
        self._watcher: asyncio.Task[None] | None = None
        self.cut = 0
        """Observations cut short, over the checker's life."""

    @asynccontextmanager
    async def watching(
        self, out: Callable[[float], tuple[str, float] | None]
    ) -> AsyncIterator[Watched]:
        """Run an observation under a scope the drain may end: ``TimeoutError`` out of it
        with ``cut`` set and the scope expired means it was cut (counted here); any other
        is the observation's own."""
        scope = asyncio.timeout(None)
        watched = Watched(scope, out)
        try:
            async with scope:
                self._open.add(watched)
                try:
                    yield watched
                finally:
                    self._open.discard(watched)
        except TimeoutError:
            if watched.cut is not None and scope.expired():
                self.cut += 1
            raise

    def limit(self, server: str) -> float | None:
        """Seconds a request to ``server`` may be out while the run drains."""
        usual = self._usual(server)
        return None if usual is None else max(TAIL_MIN, TAIL_FACTOR * usual)

    def drain(self) -> None:
        """Nothing is left to start: from now on, cut the stragglers (idempotent)."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """The run is over: stop looking (a caller cancelled meanwhile stays cancelled)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait({watcher})
            if not watcher.cancelled() and watcher.exception() is not None:
                log.error("the stragglers' watcher failed", exc_info=watcher.exception())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = self._clock()
            for watched in list(self._open):
                out = None if watched.scope.expired() else watched.out(now)
                if out is None:
                    continue
                server, seconds = out
                limit = self.limit(server)
                if limit is None or seconds < limit:
                    continue
                usual = self._usual(server) or 0.0
                watched.cut = (
                    f"still waiting on {server} {seconds:.1f} s after the first request to "
                    f"it (it usually answers in {usual * 1000:.0f} ms) when the run had "
                    f"nothing else to start: {NOT_WAITED}, the domain is checked again later"
                )
                watched.scope.reschedule(loop.time())
            await asyncio.sleep(TICK)
