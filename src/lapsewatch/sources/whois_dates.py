"""Reading a WHOIS date strictly, in the day/month order known for its TLD.

Registries write dates in many forms; a guessing parser would turn 04/06/2003
into a wrong day, so every accepted form is spelled out here and an ambiguous
date becomes ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

__all__ = ["DAY_FIRST", "parse_whois_date"]


# --- dates --------------------------------------------------------------------------

DAY_FIRST: Mapping[str, bool] = {
    "bg": True,  # "expires at: 30/06/2014 00:00:00 EEST"
    "es": True,  # "Expiration Date: 16/09/14" (2015 format, DD/MM/YY)
    "hk": True,  # "Expiry Date: 31-03-2014"
    "il": True,  # "validity: 05-06-2018" (ISOC-IL: DD-MM-YYYY)
    "mk": True,  # "expire: 22.05.2027"
    "pt": True,  # "Creation Date (dd/mm/yyyy): 09/01/2003"
    "rs": True,  # "Registration date: 26.03.2008 16:18:03"
}
"""TLDs whose all-numeric dates are known to put the day first (or not). For any
other TLD an all-numeric date whose first two numbers could both be a month is
ambiguous and read as ``None``; python-whois's own per-TLD ``dayfirst`` is used
when it sets one."""

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january", "ene", "enero", "januar"),
            ("feb", "february", "febrero", "februar"),
            ("mar", "march", "marzo", "märz"),
            ("apr", "april", "abr", "abril"),
            ("may", "mayo", "mai"),
            ("jun", "june", "junio", "juni"),
            ("jul", "july", "julio", "juli"),
            ("aug", "august", "ago", "agosto"),
            ("sep", "sept", "september", "septiembre", "setiembre"),
            ("oct", "october", "octubre", "okt", "oktober"),
            ("nov", "november", "noviembre"),
            ("dec", "december", "dic", "diciembre", "dez", "dezember"),
        ),
        start=1,
    )
    for name in names
}
_ZONES = {
    "UTC": 0,
    "GMT": 0,
    "Z": 0,
    "WET": 0,
    "CET": 60,
    "CEST": 120,
    "EET": 120,
    "EEST": 180,
    "MSK": 180,
    "JST": 540,
    "KST": 540,
    "HKT": 480,
    "CLT": -240,
    "CLST": -180,
}
_TIME = (
    r"(?:[Tt ]+(?P<time>\d{1,2}:\d{2}(?::\d{2})?)(?:[.,](?P<fraction>\d+))?)?"
    r"\s*(?P<zone>[Zz](?![a-z])|[+-]\d{2}:?\d{2}|\(?(?:GMT|UTC)?[+-]\d{1,2}:\d{2}\)?"
    r"|\(?[A-Z]{1,4}\)?)?"
)
_YMD = re.compile(
    r"^(?P<y>\d{4})(?P<s>[-./]|\. )(?P<m>\d{1,2})(?P=s)(?P<d>\d{1,2})\.?" + _TIME + r"\s*$"
)
_YMD_COMPACT = re.compile(r"^(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})" + _TIME + r"\s*$")
_Y_MON_D = re.compile(r"^(?P<y>\d{4})-(?P<mon>[A-Za-z]{3,})-(?P<d>\d{1,2})\.?" + _TIME + r"\s*$")
_D_MON_Y = re.compile(
    r"^(?P<d>\d{1,2})[- ](?:de )?(?P<mon>[A-Za-zäé]{3,})[- ](?:de )?(?P<y>\d{4})\.?"
    + _TIME
    + r"\s*$"
)
_WEEKDAY_MON_D_Y = re.compile(
    r"^(?:[A-Za-z]{3},? )?(?P<mon>[A-Za-z]{3,}) (?P<d>\d{1,2}),? "
    r"(?:(?P<time>\d{2}:\d{2}:\d{2}) (?P<zone>[A-Z]{1,4}) )?(?P<y>\d{4})\s*$"
)
_NUMERIC = re.compile(
    r"^(?P<a>\d{1,2})(?P<s>[-./])(?P<b>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})" + _TIME + r"\s*$"
)


def _zone(text: str | None) -> timezone | None:
    """A UTC offset for a zone written after a date; None when it means nothing to us."""
    if not text:
        return UTC
    zone = text.strip("() ")
    if zone.upper() in _ZONES:
        return timezone(timedelta(minutes=_ZONES[zone.upper()]))
    match = re.fullmatch(r"(?:GMT|UTC)?([+-])(\d{1,2}):?(\d{2})", zone, re.IGNORECASE)
    if match is None:
        return UTC  # an unknown zone name: the day is still right within a day
    sign = -1 if match[1] == "-" else 1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))


def _build(year: int, month: int, day: int, match: re.Match[str] | None = None) -> datetime | None:
    hour = minute = second = micro = 0
    zone: timezone | None = UTC
    if match is not None:
        groups = match.groupdict()
        if groups.get("time"):
            parts = [int(p) for p in groups["time"].split(":")]
            hour, minute = parts[0], parts[1]
            second = parts[2] if len(parts) > 2 else 0
        if groups.get("fraction"):
            micro = int(groups["fraction"][:6].ljust(6, "0"))
        zone = _zone(groups.get("zone"))
    try:
        value = datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
    except ValueError:
        return None
    return value.astimezone(UTC)


def parse_whois_date(text: str, day_first: bool | None = None) -> datetime | None:
    """A date as a registry wrote it, or None when unreadable or ambiguous.

    Year-first and month-name forms are read as they are. An all-numeric
    ``NN-NN-YYYY`` needs ``day_first`` (the TLD's known order) unless one of the
    two numbers is above 12; a two-digit year needs ``day_first`` too (and is
    read as 1970-2069).
    """
    value = text.strip().rstrip(".").strip() if text.strip().endswith(".") else text.strip()
    value = re.sub(r"\s+", " ", value)
    if not value or len(value) > 60:
        return None
    for pattern in (_YMD, _YMD_COMPACT):
        match = pattern.match(value) or pattern.match(text.strip())
        if match is not None:
            return _build(int(match["y"]), int(match["m"]), int(match["d"]), match)
    for pattern in (_Y_MON_D, _D_MON_Y, _WEEKDAY_MON_D_Y):
        match = pattern.match(text.strip()) or pattern.match(value)
        if match is not None:
            month = _MONTHS.get(match["mon"].lower())
            if month is None:
                return None
            return _build(int(match["y"]), month, int(match["d"]), match)
    match = _NUMERIC.match(value)
    if match is None:
        return None
    a, b, year_text = int(match["a"]), int(match["b"]), match["y"]
    if len(year_text) == 2:
        if day_first is None:
            return None
        short = int(year_text)
        year = 2000 + short if short < 70 else 1900 + short
    else:
        year = int(year_text)
    if day_first is None:
        if a > 12 >= b:
            day_first = True
        elif b > 12 >= a:
            day_first = False
        else:
            return None  # 04/06/2003: April or June? Never guessed.
    day, month = (a, b) if day_first else (b, a)
    return _build(year, month, day, match)
