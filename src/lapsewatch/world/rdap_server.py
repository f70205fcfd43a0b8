"""A fake registry RDAP service (RFC 9082/9083) with its own RFC 9224 bootstrap file.

Every TLD gets its own base URL on one local server, the way IANA's bootstrap
points each TLD at its registry, so clients exercise their bootstrap lookup too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import unquote, urlsplit

import idna

from lapsewatch.world.http_base import JsonHandler, LoopbackHTTPServer
from lapsewatch.world.live import LiveScenario
from lapsewatch.world.scenario import DateStyle, DomainScenario, Scenario

__all__ = ["BOOTSTRAP_PATH", "RdapServer", "bootstrap_document", "domain_object", "format_date"]

BOOTSTRAP_PATH = "/bootstrap/dns.json"
RDAP_JSON = "application/rdap+json"
_OFFSET = timezone(timedelta(hours=2))
_CONFORMANCE = [
    "rdap_level_0",
    "icann_rdap_technical_implementation_guide_1",
    "icann_rdap_response_profile_1",
]


def format_date(value: datetime, style: DateStyle) -> str:
    """Render a date the way one kind of registry does."""
    utc = value.astimezone(UTC)
    if style == "fraction":
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if style == "offset":
        return value.astimezone(_OFFSET).isoformat(timespec="seconds")
    if style == "nozone":
        return utc.strftime("%Y-%m-%dT%H:%M:%S")
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def tld_base_url(server_url: str, tld: str) -> str:
    return f"{server_url}/rdap/{tld}/"


def bootstrap_document(scenario: Scenario, server_url: str) -> dict[str, object]:
    """RFC 9224 ``dns.json`` listing every served TLD except ``rdap_missing_tlds``."""
    return {
        "version": "1.0",
        "publication": format_date(scenario.now, "z"),
        "description": "RDAP bootstrap file for Domain Name System registrations "
        "(lapsewatch local world)",
        "services": [[[tld], [tld_base_url(server_url, tld)]] for tld in scenario.rdap_tlds],
    }


def error_object(code: int, title: str, description: str) -> dict[str, object]:
    """RFC 9083 section 6 error response."""
    return {
        "errorCode": code,
        "title": title,
        "description": [description],
        "rdapConformance": ["rdap_level_0"],
    }


def domain_object(domain: DomainScenario, base_url: str, now: datetime) -> dict[str, object]:
    """RFC 9083 domain object shaped like a large gTLD registry's (upper-case names)."""
    style = domain.date_style
    ldh = domain.name.upper()
    events: list[dict[str, str]] = []
    for action, when in (
        ("registration", domain.registered),
        ("expiration", domain.expires if domain.expiration_event else None),
        ("last changed", domain.last_changed),
        ("last update of RDAP database", now),
    ):
        if when is not None:
            events.append({"eventAction": action, "eventDate": format_date(when, style)})
    # A new registration gets a new repository object, hence the date in the handle.
    seed = f"{domain.name}|{domain.registered}".encode()
    handle = (
        f"{int(hashlib.sha256(seed).hexdigest()[:12], 16) % 10**10}_DOMAIN_{domain.tld.upper()}"
    )
    self_url = f"{base_url}domain/{domain.name}"
    document: dict[str, object] = {
        "objectClassName": "domain",
        "handle": f"{handle}-WORLD",
        "ldhName": ldh,
        "links": [{"value": self_url, "rel": "self", "href": self_url, "type": RDAP_JSON}],
        "status": list(domain.statuses),
        "entities": [_registrar()],
        "events": events,
        "secureDNS": {"delegationSigned": False},
        "nameservers": [
            {"objectClassName": "nameserver", "ldhName": host.upper()}
            for host in domain.nameservers
        ],
        "rdapConformance": _CONFORMANCE,
        "notices": _notices(base_url),
    }
    if "xn--" in domain.name:
        with contextlib.suppress(idna.IDNAError):
            document["unicodeName"] = idna.decode(domain.name)
    return document


def _registrar() -> dict[str, object]:
    return {
        "objectClassName": "entity",
        "handle": "9999",
        "roles": ["registrar"],
        "publicIds": [{"type": "IANA Registrar ID", "identifier": "9999"}],
        "vcardArray": [
            "vcard",
            [["version", {}, "text", "4.0"], ["fn", {}, "text", "World Registrar, Inc."]],
        ],
    }


def _notices(base_url: str) -> list[dict[str, object]]:
    return [
        {
            "title": "Terms of Use",
            "description": ["A lapsewatch local world: every record here is made up."],
            "links": [{"value": base_url, "rel": "alternate", "href": f"{base_url}help"}],
        },
        {
            "title": "Status Codes",
            "description": ["For more information on domain status codes, see RFC 8056."],
        },
    ]


class _RdapHandler(JsonHandler):
    server: RdapServer

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        snapshot = self.server.live.current
        if path == BOOTSTRAP_PATH:
            self.server.requests.add(BOOTSTRAP_PATH)
            self.send_json(200, bootstrap_document(snapshot.scenario, self.server.url))
            return
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) == 3 and parts[0] == "rdap" and parts[2] == "help":
            self.server.requests.add(path)
            self.send_json(200, {"rdapConformance": ["rdap_level_0"], "notices": _notices("")})
            return
        if len(parts) != 4 or parts[0] != "rdap" or parts[2] != "domain":
            self.server.requests.add(path)
            self._error(400, "Bad Request", "only /rdap/{tld}/domain/{name} is served here")
            return
        tld, name = parts[1].lower(), parts[3].rstrip(".")
        try:
            name = idna.encode(name, uts46=True).decode() if not name.isascii() else name.lower()
        except idna.IDNAError:
            self.server.requests.add(name)
            self._error(400, "Bad Request", f"{name!r} is not a valid domain name")
            return
        self.server.requests.add(name)
        scenario = snapshot.scenario
        if tld not in scenario.rdap_tlds or not name.endswith(f".{tld}"):
            self._error(404, "Not Found", f"this server does not serve {name!r}")
            return
        domain = scenario.domain(name)
        if domain is None:
            if self.paced():
                self._not_found(name)
            return
        self._answer(domain, tld_base_url(self.server.url, tld))

    def _answer(self, domain: DomainScenario, base_url: str) -> None:
        if not self.paced():
            return
        fault = self.server.chaos(domain.rdap)
        if fault == "timeout" and not self.server.hang():
            return  # the world is stopping: drop the request
        if fault == "flip":  # 404, 200, 404, ... for this domain
            fault = "404" if self.server.flip(domain.name) % 2 else "ok"
        record = domain_object(domain, base_url, datetime.now(UTC))
        if self.hostile(fault, json.dumps(record).encode(), RDAP_JSON):
            return
        if fault == "no_ldh":  # another domain's redemption record, naming no domain
            other = replace(domain, name=f"other-{domain.name}", statuses=("redemption period",))
            lapsed = domain_object(other, base_url, datetime.now(UTC))
            lapsed.pop("ldhName", None)
            lapsed.pop("unicodeName", None)
            self.send_json(200, lapsed, RDAP_JSON)
        elif fault == "error_200":
            self.send_json(200, error_object(404, "Not Found", "no such domain"), RDAP_JSON)
        elif fault == "404" or (domain.state == "available" and fault in ("ok", "timeout")):
            self._not_found(domain.name)
        elif fault == "429":
            self._error(429, "Too Many Requests", "rate limit exceeded", {"Retry-After": "1"})
        elif fault == "500":
            self._error(500, "Internal Server Error", "the registry database is unavailable")
        elif fault == "invalid_json":
            self.send_body(200, b"<html><body>Service temporarily unavailable", RDAP_JSON)
        elif fault == "not_object":
            self.send_json(200, [domain.name.upper()], RDAP_JSON)
        else:
            self.send_json(200, record, RDAP_JSON)

    def _not_found(self, name: str) -> None:
        self._error(404, "Not Found", f"the domain {name!r} is not registered")

    def _error(
        self, code: int, title: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_json(code, error_object(code, title, description), RDAP_JSON, headers)


class RdapServer(LoopbackHTTPServer):
    """RDAP plus ``/bootstrap/dns.json`` on one loopback port."""

    def __init__(self, live: LiveScenario, hang_seconds: float) -> None:
        super().__init__(_RdapHandler, live, hang_seconds)
        self._flips: dict[str, int] = {}
        self._flips_lock = threading.Lock()

    def flip(self, name: str) -> int:
        """How many 'flip' requests for ``name`` arrived, this one included."""
        with self._flips_lock:
            self._flips[name] = self._flips.get(name, 0) + 1
            return self._flips[name]

    @property
    def bootstrap_url(self) -> str:
        return f"{self.url}{BOOTSTRAP_PATH}"
