"""Which RDAP server answers for a TLD: the IANA bootstrap (RFC 9224).

A copy of IANA's ``dns.json`` ships with the package so the first run needs no
download. ``lapsewatch rdap-bootstrap update`` saves a fresher copy in the user's
cache directory, which then wins. Several ccTLDs whose registries do answer RDAP
are missing from IANA's file; the shipped override table fills those gaps for
the shipped and the refreshed copy. A bootstrap named by
``LAPSEWATCH_RDAP_BOOTSTRAP_URL`` is used exactly as given (no overrides), so a
private or test world never leaks queries to the public internet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from lapsewatch.sources import _http
from lapsewatch.sources.interface import SourceError

__all__ = [
    "IANA_BOOTSTRAP_URL",
    "Bootstrap",
    "BootstrapError",
    "cached_bootstrap_path",
    "load_bootstrap",
    "parse_bootstrap",
]

IANA_BOOTSTRAP_URL = "https://data.iana.org/rdap/dns.json"
BOOTSTRAP_MAX_BYTES = 8 * 1024 * 1024
"""IANA's file is about 30 KB; this leaves room for a big private one."""


class BootstrapError(SourceError):
    """The bootstrap file could not be read or is not RFC 9224 JSON."""


@dataclass(frozen=True)
class Bootstrap:
    """TLD (or multi-label suffix) → RDAP base URLs."""

    services: Mapping[str, tuple[str, ...]]
    publication: str | None = None
    origin: str = "shipped"

    def base_urls(self, domain: str) -> tuple[str, ...]:
        """Base URLs for the longest suffix of ``domain`` that has an entry."""
        labels = domain.lower().rstrip(".").split(".")
        for start in range(1, len(labels)):
            urls = self.services.get(".".join(labels[start:]))
            if urls:
                return urls
        return ()

    def with_overrides(self, overrides: Mapping[str, str]) -> Bootstrap:
        """Add entries for suffixes the file lacks; never replace what IANA lists."""
        services = dict(self.services)
        for suffix, url in overrides.items():
            services.setdefault(suffix, (url,))
        return Bootstrap(services, self.publication, self.origin)


def parse_bootstrap(data: Any, origin: str) -> Bootstrap:
    """Validate RFC 9224 JSON; prefer https base URLs, keep their order."""
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        raise BootstrapError(f"{origin}: not an RDAP bootstrap file (no 'services' list)")
    services: dict[str, tuple[str, ...]] = {}
    for entry in data["services"]:
        if (
            not isinstance(entry, list)
            or len(entry) < 2
            or not all(isinstance(x, list) for x in entry[:2])
        ):
            raise BootstrapError(f"{origin}: malformed service entry {str(entry)[:80]}")
        suffixes, urls = entry[0], entry[1]
        clean = tuple(
            sorted(
                (u if u.endswith("/") else u + "/" for u in urls if isinstance(u, str)),
                key=lambda u: not u.startswith("https:"),
            )
        )
        for suffix in suffixes:
            if isinstance(suffix, str) and clean:
                services[suffix.lower().strip(".")] = clean
    publication = data.get("publication")
    return Bootstrap(services, publication if isinstance(publication, str) else None, origin)


def cached_bootstrap_path() -> Path:
    """Where ``lapsewatch rdap-bootstrap update`` keeps the refreshed copy."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lapsewatch" / "rdap-dns.json"


def _shipped_overrides() -> dict[str, str]:
    text = resources.files("lapsewatch.data").joinpath("rdap-overrides.json").read_text()
    services = json.loads(text)["services"]
    return {str(k): str(v) for k, v in services.items()}


def _read_json(text: str, origin: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BootstrapError(f"{origin}: invalid JSON ({exc})") from None


async def load_bootstrap(location: str | None, client: httpx.AsyncClient) -> Bootstrap:
    """Load from a URL or file path, or the refreshed/shipped copy when ``None``."""
    if location is None:
        cached = cached_bootstrap_path()
        if cached.is_file():
            try:
                data = _read_json(cached.read_text(encoding="utf-8"), str(cached))
                return parse_bootstrap(data, str(cached)).with_overrides(_shipped_overrides())
            except (OSError, BootstrapError):
                pass  # a broken cache must not stop checks: fall back to the shipped copy
        text = resources.files("lapsewatch.data").joinpath("iana-rdap-dns.json").read_text()
        return parse_bootstrap(_read_json(text, "shipped"), "shipped").with_overrides(
            _shipped_overrides()
        )
    if location.startswith(("http://", "https://")):
        try:
            response = await _http.get(
                client, location, attempts=2, max_retry_after=5.0, max_bytes=BOOTSTRAP_MAX_BYTES
            )
        except httpx.TransportError as exc:
            why = _http.describe_transport_error(exc, client.timeout.read or 0.0)
            raise BootstrapError(f"{location}: {why}") from None
        if response.status_code != 200:
            raise BootstrapError(f"{location}: HTTP {response.status_code}")
        return parse_bootstrap(_read_json(response.text, location), location)
    path = Path(location.removeprefix("file://"))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BootstrapError(f"{path}: {exc}") from None
    return parse_bootstrap(_read_json(text, str(path)), str(path))
