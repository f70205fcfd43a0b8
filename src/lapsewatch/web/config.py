"""Settings of the web app itself, read from ``LAPSEWATCH_*`` variables.

Kept apart from the account settings: these bound what one HTTP request may
cost the server (body sizes) and where webhooks may point.

| variable | meaning | default |
| --- | --- | --- |
| ``LAPSEWATCH_MAX_PUSH_BYTES`` | largest body of ``POST /api/v1/addresses`` | 5 MiB |
| ``LAPSEWATCH_MAX_BODY_BYTES`` | largest body of any other request | 64 KiB |
| ``LAPSEWATCH_WEBHOOK_ALLOW`` | comma list of CIDRs webhooks may reach although internal | none |
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from lapsewatch.config import ConfigError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_PUSH_BYTES",
    "IPNetwork",
    "WebSettings",
    "parse_networks",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_PUSH_BYTES = 5 * 1024 * 1024
"""1,000 addresses (the most one push takes) fit many times over."""
DEFAULT_MAX_BODY_BYTES = 64 * 1024
"""Every form and every other API body is far smaller."""


def parse_networks(text: str, *, name: str = "LAPSEWATCH_WEBHOOK_ALLOW") -> tuple[IPNetwork, ...]:
    """``"127.0.0.1/32, 10.1.0.0/16"`` as networks; a bare address is a /32 (or /128)."""
    networks: list[IPNetwork] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{name}: {part!r} is not an IP network ({exc})") from None
    return tuple(networks)


@dataclass(frozen=True)
class WebSettings:
    max_push_bytes: int = DEFAULT_MAX_PUSH_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    webhook_allow: tuple[IPNetwork, ...] = ()
    """Internal networks (loopback, private, …) that webhooks may nevertheless reach: an
    operator's explicit choice for a receiver on the same host or network."""
    reauth_seconds: int = 600
    """How long a password entry counts for sensitive actions (address changes, 2FA)."""

    def __post_init__(self) -> None:
        if self.max_push_bytes < 1024 or self.max_body_bytes < 1024:
            raise ConfigError("body limits below 1 KiB would refuse ordinary requests")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebSettings:
        env = os.environ if environ is None else environ

        def size(name: str, default: int) -> int:
            value = (env.get(f"LAPSEWATCH_{name}") or "").strip()
            if not value:
                return default
            if not value.isdigit():
                raise ConfigError(f"LAPSEWATCH_{name}={value!r}: expected a number of bytes")
            return int(value)

        return cls(
            max_push_bytes=size("MAX_PUSH_BYTES", DEFAULT_MAX_PUSH_BYTES),
            max_body_bytes=size("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            webhook_allow=parse_networks(env.get("LAPSEWATCH_WEBHOOK_ALLOW", "")),
        )
