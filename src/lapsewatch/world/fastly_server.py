"""A fake of Fastly's Domain Status API (formerly Domainr), including its older v2 shape.

Answers ``GET /domain-management/v1/tools/status?domain=X&scope=estimate`` the way
the real API does, so the Fastly source is tested against the documented contract.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from lapsewatch.world.http_base import JsonHandler, LoopbackHTTPServer
from lapsewatch.world.live import LiveScenario
from lapsewatch.world.scenario import Scenario

__all__ = ["STATUS_PATH", "FastlyServer", "status_of", "summary_of"]

STATUS_PATH = "/domain-management/v1/tools/status"
# Domainr v2 "summary": the one token that best describes the status, most telling first.
_SUMMARY_ORDER = (
    "marketed",
    "priced",
    "parked",
    "deleting",
    "expiring",
    "inactive",
    "undelegated",
    "active",
)


def status_of(scenario: Scenario, name: str) -> str:
    """The status string for any name: scenario value, unregistered, or unknown TLD."""
    domain = scenario.domain(name)
    if domain is not None:
        return domain.fastly_status
    if name.rsplit(".", 1)[-1] in scenario.tlds:
        return "undelegated inactive"
    return "unknown"


def summary_of(status: str) -> str:
    tokens = status.split()
    return next((t for t in _SUMMARY_ORDER if t in tokens), tokens[-1] if tokens else "unknown")


class _FastlyHandler(JsonHandler):
    server: FastlyServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        name = (query.get("domain") or [""])[0].strip().lower().rstrip(".")
        scope = (query.get("scope") or ["estimate"])[0]
        self.server.requests.add(name or url.path)
        if self.headers.get("Fastly-Key") != self.server.fastly_key:
            self.send_json(401, {"msg": "Provided credentials are missing or invalid"})
            return
        if url.path != STATUS_PATH:
            self.send_json(404, {"msg": "Record not found", "detail": f"no route {url.path}"})
            return
        if not name:
            self.send_json(400, {"msg": "Bad request", "detail": "domain is required"})
            return
        if not self.paced():
            return
        scenario = self.server.live.current.scenario
        domain = scenario.domain(name)
        fault = self.server.chaos(domain.fastly if domain is not None else "ok")
        if fault == "timeout" and not self.server.hang():
            return  # the world is stopping: drop the request
        status = status_of(scenario, name)
        zone = name.rsplit(".", 1)[-1]
        honest = {"domain": name, "zone": zone, "status": status, "scope": scope}
        if self.hostile(fault, json.dumps(honest).encode(), "application/json"):
            return
        if fault == "401":
            self.send_json(401, {"msg": "Provided credentials are missing or invalid"})
        elif fault == "500":
            self.send_json(500, {"msg": "Internal Server Error"})
        elif fault == "429":
            self.send_json(429, {"msg": "Too Many Requests"}, headers={"Retry-After": "1"})
        elif fault == "invalid_json":
            self.send_body(200, b'{"domain": "' + name.encode(), "application/json")
        elif fault == "v2":
            entry = {"domain": name, "zone": zone, "status": status, "summary": summary_of(status)}
            self.send_json(200, {"status": [entry]})
        else:
            self.send_json(200, {"domain": name, "zone": zone, "status": status, "scope": scope})


class FastlyServer(LoopbackHTTPServer):
    """Checks the ``Fastly-Key`` header against ``fastly_key`` on every request."""

    def __init__(self, live: LiveScenario, hang_seconds: float, fastly_key: str) -> None:
        super().__init__(_FastlyHandler, live, hang_seconds)
        self.fastly_key = fastly_key
