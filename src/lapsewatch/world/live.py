"""The running world's shared, thread-safe state: current scenario, zones and counters.

Server threads read one immutable snapshot per request; changes swap in a new
snapshot atomically, so a request never sees half an update.
"""

from __future__ import annotations

import threading
from collections import Counter as _Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import dns.zone

from lapsewatch.world.scenario import DomainScenario, Scenario
from lapsewatch.world.zone import build_apex_zones, build_mail_zones, build_zones

__all__ = ["LiveScenario", "RequestCounter", "Snapshot"]


class RequestCounter:
    """Counts requests per key (a domain name, or a path) so tests can assert traffic."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: _Counter[str] = _Counter()

    def add(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def __getitem__(self, key: str) -> int:
        with self._lock:
            return self._counts[key]

    @property
    def total(self) -> int:
        with self._lock:
            return self._counts.total()

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def __repr__(self) -> str:
        return f"RequestCounter({self.as_dict()!r})"


@dataclass(frozen=True)
class Snapshot:
    """One consistent view: the scenario, its zones and their SOA serial."""

    scenario: Scenario
    serial: int

    @cached_property
    def apex_zones(self) -> dict[str, dns.zone.Zone]:
        """The zones without delegations: the builtin server makes those from the scenario."""
        return build_apex_zones(self.scenario, self.serial)

    @cached_property
    def zones(self) -> dict[str, dns.zone.Zone]:
        """The complete zones (for NSD), built on first use: a big world's take a while;
        with a zone of its own for each domain that lists mail hosts (MX)."""
        return {
            **build_zones(self.scenario, self.serial),
            **build_mail_zones(self.scenario, self.serial),
        }


Listener = Callable[[Snapshot], None]


class LiveScenario:
    """Holds the current snapshot and tells listeners (bootstrap file, NSD) about changes."""

    def __init__(self, scenario: Scenario) -> None:
        self._lock = threading.Lock()
        serial = int(scenario.now.timestamp()) % 2**32
        self._snapshot = Snapshot(scenario, serial)
        self._listeners: list[Listener] = []

    @property
    def current(self) -> Snapshot:
        return self._snapshot

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def set_domain(self, domain: DomainScenario) -> None:
        self._change(lambda s: s.with_domain(domain))

    def remove_domain(self, name: str) -> None:
        self._change(lambda s: s.without_domain(name))

    def _change(self, edit: Callable[[Scenario], Scenario]) -> None:
        with self._lock:  # serialises writers; readers never wait
            scenario = edit(self._snapshot.scenario)
            serial = (self._snapshot.serial + 1) % 2**32
            self._snapshot = Snapshot(scenario, serial)
            for listener in self._listeners:
                listener(self._snapshot)
