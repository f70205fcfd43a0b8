"""Parse the date forms that RDAP servers really send.

RFC 3339 says one thing; registries send fractional seconds of any length,
offsets, a lower-case ``t``/``z``, a space for ``T``, no zone at all (read as
UTC, which is what those servers mean) or just a date.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["isoformat", "parse_datetime"]

_PATTERN = re.compile(
    r"""^\s*
    (?P<date>\d{4}-\d{2}-\d{2})
    (?:[Tt\ ](?P<time>\d{2}:\d{2}(?::\d{2})?)
       (?:[.,](?P<fraction>\d+))?
       \s*(?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?|UTC|GMT)?
    )?\s*$""",
    re.VERBOSE,
)


def parse_datetime(text: str) -> datetime:
    """Return an aware UTC datetime; raise ``ValueError`` on anything else."""
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 date: {text[:60]!r}")
    time = match["time"] or "00:00:00"
    if len(time) == 5:
        time += ":00"
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    zone = match["zone"] or "Z"
    if zone.upper() in ("Z", "UTC", "GMT"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:] or '00'}"
    value = datetime.fromisoformat(f"{match['date']}T{time}.{fraction}{zone}")
    return value.astimezone(UTC)


def isoformat(value: datetime | None) -> str | None:
    """Format for output: UTC, seconds precision, ``Z`` suffix."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
