"""Check one domain at once, synchronously, with the cycle's own checker.

Used when an address is verified: its domain's registration date is recorded
right away (so a later re-registration is recognised) and a domain that has
already lapsed is caught before the address can receive a password reset. Also
by the admin's "check now" and the status endpoint's live checks. Its sources
are metered like the cycle's (requests, refusals and latency per server).
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from typing import Protocol

from lapsewatch import metrics
from lapsewatch.config import Settings
from lapsewatch.cycle.apply import CheckResult
from lapsewatch.cycle.checker import open_checker
from lapsewatch.cycle.due import DueDomain

__all__ = ["CycleDomainChecker", "DomainChecker"]


class DomainChecker(Protocol):
    """Checks one domain; may raise (the caller then leaves the domain due)."""

    def check(self, due: DueDomain, *, now: datetime) -> CheckResult: ...


class CycleDomainChecker:
    """Opens the configured sources for each check; safe to call from any thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(self, due: DueDomain, *, now: datetime) -> CheckResult:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._check(due, now))
        # Called from inside an event loop (an async web handler): asyncio.run would
        # refuse, so run the check on a thread of its own and wait for it.
        box: list[CheckResult | BaseException] = []

        def run() -> None:
            try:
                box.append(asyncio.run(self._check(due, now)))
            except BaseException as exc:
                box.append(exc)

        thread = threading.Thread(target=run, name="lapsewatch-check", daemon=True)
        thread.start()
        thread.join()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    async def _check(self, due: DueDomain, now: datetime) -> CheckResult:
        async with open_checker(self.settings) as checker:
            metrics.instrument(checker)
            return await checker.check_one(due, now)
