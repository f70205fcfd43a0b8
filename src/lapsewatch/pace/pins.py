"""Operators' pins: a fixed rate (or a highest rate) for a server, from a JSON file.

``LAPSEWATCH_PACE_FILE`` names a file like::

    {
      "rdap.verisign.com": 40,
      "whois.nic.it:43": {"rate": 2},
      "rdap.publicinterestregistry.org:443": {"max": 100}
    }

A number or ``{"rate": N}`` pins the server at N requests/s: nothing is learned
for it, but its ``Retry-After`` is still honoured. ``{"max": N}`` lets the rate be
learned, never above N. A key is ``host:port`` (the port of the request: 443 for
``https``, 43 for WHOIS, 53 for DNS) or a bare host for every port of that host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lapsewatch.config import ConfigError

__all__ = ["Pin", "Pins", "load_pins"]


@dataclass(frozen=True)
class Pin:
    rate: float | None = None
    maximum: float | None = None


class Pins:
    def __init__(self, pins: dict[str, Pin] | None = None) -> None:
        self._pins = {key.lower(): pin for key, pin in (pins or {}).items()}

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, server: str) -> Pin | None:
        server = server.lower()
        if server in self._pins:
            return self._pins[server]
        host = server.rsplit(":", 1)[0] if server.count(":") == 1 else server
        return self._pins.get(host)


def _positive(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"LAPSEWATCH_PACE_FILE: {where}: expected a positive number")
    return float(value)


def load_pins(path: str | None) -> Pins:
    """The pins in ``path`` (``None``: none); :class:`ConfigError` naming what is wrong."""
    if path is None:
        return Pins()
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"LAPSEWATCH_PACE_FILE={path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"LAPSEWATCH_PACE_FILE={path!r}: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"LAPSEWATCH_PACE_FILE={path!r}: expected an object of servers")
    pins: dict[str, Pin] = {}
    for server, value in document.items():
        if isinstance(value, dict):
            unknown = set(value) - {"rate", "max"}
            if unknown or not value:
                raise ConfigError(
                    f"LAPSEWATCH_PACE_FILE: {server}: expected 'rate' or 'max', "
                    f"not {sorted(unknown) or 'nothing'}"
                )
            pins[server] = Pin(
                rate=_positive(f"{server}.rate", value["rate"]) if "rate" in value else None,
                maximum=_positive(f"{server}.max", value["max"]) if "max" in value else None,
            )
        else:
            pins[server] = Pin(rate=_positive(server, value))
    return Pins(pins)
