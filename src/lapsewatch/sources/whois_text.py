"""Reading a WHOIS (RFC 3912) answer: decode it, then say what it is.

A port-43 answer is free text in the registry's own words, so an answer is only
believed for what its words are known to mean:

* an **error** (rate limit, quota, refusal, "invalid query", an empty or
  unreadable answer) whenever any known error wording appears, checked first;
* **not found** only for the not-found wording of that TLD's registry
  (:data:`NOT_FOUND`); a TLD without a known wording never says "available";
* a **record** when the answer names the asked domain and at least one field
  could be read from it (a date, a status word, a name server, or the
  registry's own domain line).

Which label carries which field comes from the per-TLD regular expressions of
the ``python-whois`` package (``whois.parser``); where they fall short
(:data:`_RULES`), our own per-TLD rules come first. Dates are never left to a
guessing parser: :func:`parse_whois_date` reads them with the day/month order
known for the TLD (:data:`DAY_FIRST`) and returns ``None`` for a date whose
order it cannot know. Nothing here raises for a hostile text: every failure of
the library becomes a parse error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

import whois.parser as _pw  # type: ignore[import-untyped]

__all__ = [
    "CHARSETS",
    "DAY_FIRST",
    "ERROR_PATTERNS",
    "NOT_FOUND",
    "WhoisAnswer",
    "decode",
    "error_wording",
    "normalize_whois_status",
    "parse_answer",
    "parse_whois_date",
]

log = logging.getLogger(__name__)

Kind = Literal["record", "not_found", "error"]

CHARSETS: Mapping[str, str] = {
    "jp": "iso-2022-jp",  # JPRS without the "/e" suffix answers in Japanese
    "kr": "euc-kr",
    "hu": "iso-8859-2",
    "cn": "gb18030",
    "tw": "big5",
    "ru": "koi8-r",
    "su": "koi8-r",
    "cl": "iso-8859-1",  # "This message is printed in ISO-8859-1"
}
"""Charset a registry is known to answer in when the bytes are not UTF-8."""


def decode(raw: bytes, tld: str) -> str:
    """UTF-8, then the registry's known charset, then latin-1 (which never fails)."""
    charset = CHARSETS.get(tld)
    if charset == "iso-2022-jp" and b"\x1b$" in raw:
        try:
            return raw.decode(charset)
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if charset is not None:
        try:
            return raw.decode(charset)
        except (UnicodeDecodeError, LookupError):
            pass
    return raw.decode("latin-1")


# --- error and rate-limit wording -------------------------------------------------

ERROR_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (label, re.compile(pattern, re.IGNORECASE | re.MULTILINE))
    for label, pattern in (
        ("rate limit", r"rate limit exceeded|limit exceeded|quota exceeded"),
        ("rate limit", r"maximum query rate reached|maximum queries per \w+ reached"),
        ("rate limit", r"number of allowed queries exceeded|exceeded the (?:maximum|allowed)"),
        ("rate limit", r"too many (?:connections|requests|queries)"),
        ("rate limit", r"please maintain at least .{0,40}before"),
        ("rate limit", r"please go away for"),
        ("rate limit", r"still in grace period"),  # EURid: "-1: Still in grace period, wait N s"
        ("rate limit", r"(?:try|retry) (?:again )?later"),
        ("refused", r"access denied|ip address blocked|request denied|not authori[sz]ed to query"),
        ("refused", r"your request could not be performed"),
        ("registry error", r"^-\d+:\s"),  # EURid and DNS.be: "-3: IP address blocked"
        ("registry error", r"^query_status:\s*[45]\d\d\b"),  # .nz: 440 Request Denied, 500 …
        ("registry error", r"service (?:is )?temporarily unavailable"),
        ("registry error", r"^invalid (?:input|query|request)\b"),
        ("registry error", r"^%?\s*error:\s*(?!\d*:?\s*(?:no entries found|domain is not))"),
    )
)
"""Wording that makes an answer an error whatever else it says. Never "rate
limited" alone: SK-NIC prints "Access to the whois service is rate limited" as
a notice on every answer."""


def error_wording(text: str) -> str | None:
    """``"rate limit: 'LIMIT EXCEEDED'"`` for a known error wording, else None."""
    for label, pattern in ERROR_PATTERNS:
        match = pattern.search(text)
        if match is not None:
            line = _line_of(text, match.start())
            return f"{label}: {line[:120]!r}"
    return None


def _line_of(text: str, index: int) -> str:
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    return text[start : end if end >= 0 else len(text)].strip()


# --- not-found wording, per registry ------------------------------------------------

_NAME = r"\"?(?P<name>[^\s\"]+?)\"?"


def _nf(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(rf"^[ \t]*{p}[ \t]*$", re.IGNORECASE | re.MULTILINE) for p in patterns)


_VERISIGN = _nf(rf"No match for {_NAME}\.?")
_RIPE_STYLE = _nf(r"%?\s*No entries found for the selected source(?:\(s\))?\.?")

NOT_FOUND: Mapping[str, tuple[re.Pattern[str], ...]] = {
    "at": _nf(r"% nothing found"),
    "be": _nf(r"Status:\s*AVAILABLE"),
    "bg": _nf(rf"Domain name {_NAME} does not exist in database!?"),
    "by": _nf(r"Object does not exist"),
    "cl": _nf(rf"{_NAME}: no existe"),
    "cn": _nf(r"no matching record\.?"),
    "com": _VERISIGN,
    "net": _VERISIGN,
    "dk": _nf(r"No entries found for the selected source\.?"),
    "ee": _nf(r"Domain not found"),
    "es": _nf(r"There is no information available on the domain consulted\.?"),
    "eu": _nf(r"Status:\s*AVAILABLE"),
    "hk": _nf(r"The domain has not been registered\.?"),
    "hr": _nf(r"%ERROR: no entries found"),
    "hu": _nf(r"Nincs tal[aá]lat / No match"),
    "ie": _nf(
        rf"% Not Registered - The domain you have requested \({_NAME}\) is not a registered "
        r"\.ie domain name\.?"
    ),
    "il": _nf(r"% No data was found to match the request criteria\.?"),
    "ir": _nf(r"%ERROR:101: no entries found"),
    "it": _nf(r"Status:\s*AVAILABLE"),
    "jp": _nf(r"No match!!"),
    "kr": _nf(
        r"Above domain name is not registered to KRNIC\.?",
        r"The requested domain was not found in the Registry or Registrar.s WHOIS Server\.?",
    ),
    "kz": _nf(r"\*\*\* Nothing found for this query\.?"),
    "lt": _nf(r"Status:\s*available"),
    "lu": _nf(r"% No such domain"),
    "lv": _nf(r"Status:\s*free"),
    "mo": _VERISIGN,
    "mx": _nf(r"No_Se_Encontro_El_Objeto/Object_Not_Found"),
    "my": _nf(rf"Domain Name \[{_NAME}\] does not exist in database"),
    "nu": _nf(rf"domain {_NAME} not found\.?"),
    "nz": _nf(r"query_status:\s*220 Available"),
    "org": _nf(r"NOT FOUND", r"Domain not found\.?"),
    "pe": _nf(r"Status:\s*Not Registered"),
    "pt": _nf(rf"{_NAME} no match"),
    "ro": _RIPE_STYLE,
    "rs": _nf(r"%ERROR:103: Domain is not registered"),
    "ru": _RIPE_STYLE,
    "se": _nf(rf"(?:domain )?{_NAME} not found\.?"),
    "sk": _nf(r"(?:Domain )?not found\.?"),
    "tn": _nf(rf"Domain {_NAME} not found"),
    "tr": _nf(rf"No match found for {_NAME}"),
    "us": _nf(r"No Data Found", rf"Not found: {_NAME}"),
    "uy": _VERISIGN,
    "ve": _VERISIGN,
    "za": _nf(r"Available"),
}
"""Each registry's own "no such domain" wording, as seen in real answers
(``shared/data/captures/whois``). Where the wording names a domain, it must be
the one asked. ``.md`` answers "No match for" with no name at all, and the
same words come with server trouble, so .md has no entry."""


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


# --- status words ---------------------------------------------------------------------

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_STATUS_WORDS: Mapping[str, tuple[str, ...]] = {
    # RDAP-style words (RFC 8056) for registry wordings, as seen in real answers.
    "ok": ("active",),
    "active": ("active",),
    "activo": ("active",),
    "registered": ("active",),
    "connected": ("active",),  # .jp [State]
    "not available": ("active",),  # .be: "Status: NOT AVAILABLE" means taken
    "dom ok": ("active",),  # .sk (old format)
    "delegated": (),
    "verified": (),
    "not verified": (),
    "unverified": (),
    "redemption": ("redemption period",),
    "redemption period": ("redemption period",),
    "redemption no provider": ("redemption period",),  # .it
    "quarantine": ("redemption period",),  # .be: 40 days in which the holder can restore it
    "pending delete": ("pending delete",),
    "pendingdelete": ("pending delete",),
    "pending release": ("pending delete",),  # .nz "210 PendingRelease"
    "deleted": ("pending delete",),  # .jp [State] Deleted (date): gone from the registry
    "to be suspended": ("expired",),  # .jp: expired, suspension scheduled
    "suspended": ("server hold",),  # .jp: out of the zone after expiry
    "expired": ("expired",),
    "dom exp": ("expired",),  # .sk (old format)
    "deactivated": ("inactive",),  # .dk, .se: expired, out of the zone, restorable
    "server hold": ("server hold",),
    "client hold": ("client hold",),
    "paid and in zone": (),
}


def _words(value: str) -> str:
    words = _CAMEL_BOUNDARY.sub(" ", value.strip()).replace("_", " ").replace("-", " ")
    return " ".join(words.lower().split())


def normalize_whois_status(raw: Iterable[str]) -> tuple[str, ...]:
    """Registry status texts → RDAP-style tokens, in order, without duplicates.

    ``"pendingDelete / redemptionPeriod"`` → ``("pending delete", "redemption
    period")``; ``"REDEMPTION-NO-PROVIDER"`` → ``("redemption period",)``;
    ``"ok (paid and in zone)"`` → ``("active",)``; EPP links and .nz's numeric
    codes are dropped; an unknown word is kept, lower-cased (``"transfer locked"``).
    """
    tokens: list[str] = []
    for text in raw:
        text = re.sub(r"https?://\S+", "", text)
        text = re.sub(r"\(\s*\d{4}/\d{2}/\d{2}\s*\)", "", text)  # .jp "Connected (2024/03/31)"
        text = re.sub(r"^\s*\d{3}\s+", "", text)  # .nz "200 Active"
        text = re.sub(r"\s+-\s+.*$", "", text)  # .kz "ok - Normal state."
        for part in re.split(r"[,/;]|\(|\)", text):
            word = _words(part).strip(" .")
            if not word or word == "-":
                continue
            tokens.extend(_STATUS_WORDS.get(word, (word,)))
    return tuple(dict.fromkeys(tokens))


# --- fields, per TLD ----------------------------------------------------------------

_Field = Literal["created", "expires", "changed", "status", "nameservers"]


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    first_only: bool = True


def _rule(pattern: str, *, every: bool = False) -> _Rule:
    return _Rule(re.compile(pattern, re.IGNORECASE | re.MULTILINE), first_only=not every)


_RULES: Mapping[str, Mapping[_Field, tuple[_Rule, ...]]] = {
    "jp": {
        "created": (_rule(r"^\s*(?:[a-z]\.\s*)?\[(?:Registered Date|Created on)\][ \t]*(\S.*)$"),),
        "expires": (
            _rule(r"^\s*\[Expires on\][ \t]*(\S.*)$"),
            # co.jp and the like: "[State] Connected (2024/03/31)", the date is the expiry.
            _rule(r"^\s*\[State\][ \t]*(?:Connected|Registered)\s*\((\d{4}/\d{2}/\d{2})\)"),
        ),
        "changed": (_rule(r"^\s*\[Last Update[d]?\][ \t]*(\S.*)$"),),
        "status": (_rule(r"^\s*\[(?:Status|State)\][ \t]*(\S.*)$", every=True),),
        "nameservers": (_rule(r"^\s*(?:[a-z]\.\s*)?\[Name Server\][ \t]*(\S+)", every=True),),
    },
    "es": {
        "created": (_rule(r"^\s*Creation Date:\s*(\S.*)$"),),
        "expires": (_rule(r"^\s*Expiration Date:\s*(\S.*)$"),),
    },
    "il": {
        # ISOC-IL gives the creation only as the "(Assigned)" change.
        "created": (_rule(r"^changed:.*?\b(\d{8})\s*\(Assigned\)"),),
        "expires": (_rule(r"^validity:\s*(\d.*)$"),),
        "status": (_rule(r"^status:\s*(\S.*)$", every=True),),
    },
    "kz": {
        "created": (_rule(r"^Domain created:\s*(\S.*)$"),),
        "changed": (_rule(r"^Last modified\s*:\s*(\S.*)$"),),
        "status": (_rule(r"^Domain status\s*:\s*(\S.*)$", every=True),),
    },
    "mk": {
        "created": (_rule(r"^created:\s*(\S.*)$"),),
        "expires": (_rule(r"^expire:\s*(\S.*)$"),),
    },
    "my": {
        "created": (_rule(r"\[Record Created\]\s*(\S.*)$"),),
        "expires": (_rule(r"\[Record Expired\]\s*(\S.*)$"),),
        "changed": (_rule(r"\[Record Last Modified\]\s*(\S.*)$"),),
        "nameservers": (_rule(r"\[(?:Primary|Secondary) Name Server\]\s*\S+\s+(\S+)", every=True),),
    },
    "md": {
        "created": (_rule(r"^Created:\s*(\S.*)$"),),
        "expires": (_rule(r"^Expiration date:\s*(\S.*)$"),),
    },
    "hu": {"created": (_rule(r"^record created:\s*(\S.*)$"),)},
    "ie": {
        "created": (_rule(r"^registration:\s*(\S.*)$"),),
        "expires": (_rule(r"^renewal:\s*(\S.*)$"),),
        "status": (_rule(r"^ren-status:\s*(\S.*)$", every=True),),
    },
    "nz": {
        "created": (_rule(r"^domain_dateregistered:\s*(\S.*)$"),),
        "expires": (_rule(r"^domain_datebilleduntil:\s*(\S.*)$"),),
        "changed": (_rule(r"^domain_datelastmodified:\s*(\S.*)$"),),
        "status": (_rule(r"^query_status:\s*(\S.*)$"),),
        "nameservers": (_rule(r"^ns_name_\d+:\s*(\S+)", every=True),),
    },
    "bg": {
        "created": (_rule(r"^activated on:\s*(\S.*)$"),),
        "expires": (_rule(r"^expires at:\s*(\S.*)$"),),
        "status": (_rule(r"^registration status:\s*(\S.*)$"),),
    },
    "tn": {"created": (_rule(r"^Acivated\s*:\s*(\S.*)$"), _rule(r"^Activated\s*:\s*(\S.*)$"))},
    "uy": {
        "created": (_rule(r"Fecha de Creacion:\s*(\S.*)$"),),
        "changed": (_rule(r"Ultima Actualizacion:\s*(\S.*)$"),),
        "status": (_rule(r"Estatus del dominio:\s*(\S.*)$"),),
    },
    "ve": {
        "created": (_rule(r"Fecha de Creacion:\s*(\S.*)$"),),
        "expires": (_rule(r"Fecha de Vencimiento:\s*(\S.*)$"),),
        "status": (_rule(r"Estatus del dominio:\s*(\S.*)$"),),
    },
    "sk": {
        "created": (_rule(r"^Created:\s*(\S.*)$"),),
        "expires": (_rule(r"^Valid Until:\s*(\S.*)$"), _rule(r"^Valid-date\s+(\S.*)$")),
        "status": (
            _rule(r"^(?:EPP |Domain )Status:\s*(\S.*)$", every=True),
            _rule(r"^Domain-status\s+(\S.*)$", every=True),
        ),
    },
    "it": {
        # Contacts carry their own indented "Created:" lines; the domain's is not indented.
        "created": (_rule(r"^Created:\s*(\S.*)$"),),
        "expires": (_rule(r"^Expire Date:\s*(\S.*)$"),),
        "status": (_rule(r"^Status:\s*(\S.*)$"),),
    },
    "hr": {
        "expires": (
            _rule(r"^Registrar Registration Expiration Date:\s*(\S.*)$"),
            _rule(r"^expires:\s*(\S.*)$"),
        ),
    },
    "ee": {
        "created": (_rule(r"^registered:\s*(\S.*)$"),),
        "expires": (_rule(r"^expire:\s*(\S.*)$"),),
        "status": (_rule(r"^status:\s*(\S.*)$", every=True),),
    },
    "lu": {"status": (_rule(r"^domaintype:\s*(\S.*)$"),)},
    "pe": {"status": (_rule(r"^Status:\s*(\S.*)$"),)},
    "us": {
        "created": (_rule(r"^Domain Registration Date:\s*(\S.*)$"),),
        "expires": (_rule(r"^Domain Expiration Date:\s*(\S.*)$"),),
    },
    "be": {
        "created": (_rule(r"^Registered:\s*(\S.*)$"),),
        "status": (_rule(r"^Status:\s*(\S.*)$"),),
    },
    "dk": {"status": (_rule(r"^Status:\s*(\S.*)$"),)},
    "se": {"status": (_rule(r"^status:\s*(\S.*)$", every=True), _rule(r"^state:\s*(\S.*)$"))},
    "nu": {"status": (_rule(r"^status:\s*(\S.*)$", every=True), _rule(r"^state:\s*(\S.*)$"))},
    "ru": {"status": (_rule(r"^state:\s*(\S.*)$"),)},
    "pt": {
        "created": (_rule(r"Creation Date(?: \(dd/mm/yyyy\))?:\s*(\S.*)$"),),
        "expires": (_rule(r"Expiration Date(?: \(dd/mm/yyyy\))?:\s*(\S.*)$"),),
        "status": (_rule(r"^(?:Estado / Status|Domain Status):\s*(\S.*)$"),),
    },
    "tr": {
        "created": (_rule(r"^Created on\.*:\s*(\S.*)$"),),
        "expires": (_rule(r"^Expires on\.*:\s*(\S.*)$"),),
    },
}
"""Our own rules, tried before python-whois's regular expressions, for TLDs where
those miss a field or read the wrong line (see ``docs/sources.md``)."""

_GENERIC_NS = (
    _rule(
        r"^\s*(?:Name Server|nserver|Nameservers?|NameServers|ns_name_\d+)\s*:\s*(\S+)", every=True
    ),
)
_NS_BLOCK = re.compile(
    r"^[ \t]*(?:Name ?servers?|NAME SERVER INFORMATION|Servidores de nombre[^\n]*"
    r"|Servidor\(es\) de Nombres de Dominio)[ \t]*:?[ \t]*\n"
    r"((?:[ \t]*-?[ \t]*[A-Za-z0-9.-]+\.[A-Za-z][^\n]*\n?)+)",
    re.IGNORECASE | re.MULTILINE,
)


def _ns_block(text: str) -> list[str]:
    """Name servers listed one a line under a heading (EURid, .pe, .cl, .bg, .uy)."""
    match = _NS_BLOCK.search(text)
    if match is None:
        return []
    return [line.strip().lstrip("-").split()[0] for line in match[1].splitlines() if line.strip()]


_LIBRARY_KEYS: Mapping[_Field, str] = {
    "created": "creation_date",
    "expires": "expiration_date",
    "changed": "updated_date",
    "status": "status",
    "nameservers": "name_servers",
}


def _library_regexes(domain: str) -> tuple[dict[str, str], bool | None]:
    """python-whois's regexes for this domain's TLD, and its ``dayfirst`` flag."""
    try:
        entry = _pw.WhoisEntry.load(domain, "")
        regexes = getattr(entry, "_regex", None)
        day_first = getattr(entry, "dayfirst", None)
    except Exception:  # the library's own checks: fall back to its generic table
        regexes, day_first = _pw.WhoisEntry._regex, None
    if not isinstance(regexes, dict):
        return {}, None
    cleaned = {k: v for k, v in regexes.items() if isinstance(k, str) and isinstance(v, str)}
    return cleaned, (True if day_first is True else None)


def _values(pattern: re.Pattern[str], text: str, first_only: bool) -> list[str]:
    values: list[str] = []
    for match in pattern.finditer(text):
        groups = [g for g in match.groups() if g] or [match.group(0)]
        value = groups[0].strip()
        if value:
            values.append(value)
            if first_only:
                break
    return values


def _extract(text: str, domain: str, tld: str) -> tuple[dict[_Field, list[str]], bool | None]:
    library, library_day_first = _library_regexes(domain)
    fields: dict[_Field, list[str]] = {}
    own = _RULES.get(tld, {})
    for name, key in _LIBRARY_KEYS.items():
        values: list[str] = []
        for rule in own.get(name, ()):
            values = _values(rule.pattern, text, rule.first_only)
            if values:
                break
        if not values and key in library:
            try:
                pattern = re.compile(library[key], re.IGNORECASE | re.MULTILINE)
            except re.error:
                pattern = None
            if pattern is not None:
                many = name in ("status", "nameservers")
                values = _values(pattern, text, first_only=not many)
        if not values and name == "nameservers":
            values = _values(_GENERIC_NS[0].pattern, text, first_only=False) or _ns_block(text)
        if values:
            fields[name] = values
    return fields, library_day_first


# --- the answer -------------------------------------------------------------------------


@dataclass(frozen=True)
class WhoisAnswer:
    """What one WHOIS answer says about one domain."""

    kind: Kind
    detail: str
    created: datetime | None = None
    expires: datetime | None = None
    changed: datetime | None = None
    status: tuple[str, ...] = ()
    nameservers: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())


_NO_DATE = frozenset({"n/a", "na", "-", "none", "not available", "unlimited"})


def _tld_of(domain: str) -> str:
    return domain.rsplit(".", 1)[-1].lower()


def _meaningful(text: str) -> str:
    """The answer without comment lines and blank lines (for emptiness checks)."""
    lines = [
        line
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith(("%", "#", ">>>"))
    ]
    return "\n".join(lines)


def _names_domain(text: str, domain: str) -> bool:
    pattern = re.compile(rf"(?<![A-Za-z0-9.-]){re.escape(domain)}(?![A-Za-z0-9-])", re.IGNORECASE)
    return pattern.search(text) is not None


def _not_found(text: str, domain: str, tld: str) -> tuple[bool, str | None]:
    """(matched, problem): the TLD's not-found wording, naming ``domain`` if it names one."""
    for pattern in NOT_FOUND.get(tld, ()):
        match = pattern.search(text)
        if match is None:
            continue
        name = match.groupdict().get("name")
        if name is not None and name.lower().rstrip(".") != domain:
            return True, f"not-found wording names {name[:80]!r}, not {domain}"
        return True, None
    return False, None


def parse_answer(text: str, domain: str, wording: str | None = None) -> WhoisAnswer:
    """Classify a decoded answer about ``domain`` (lower-case ASCII); never raises.

    ``wording`` names the TLD whose registry's words and formats apply when it is
    not the domain's own (a private registry that answers like ``ru``'s).
    """
    try:
        return _parse(text, domain.lower().rstrip("."), (wording or "").lower() or None)
    except Exception as exc:  # a hostile text must stay a parse error, never a crash
        log.warning("%s: WHOIS answer could not be parsed: %r", domain, exc, exc_info=exc)
        return WhoisAnswer("error", f"unparseable answer ({type(exc).__name__})")


def _parse(text: str, domain: str, wording: str | None) -> WhoisAnswer:
    tld = wording or _tld_of(domain)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return WhoisAnswer("error", "empty answer")
    if "\x00" in text:
        return WhoisAnswer("error", "garbage answer (NUL bytes)")
    wording = error_wording(text)
    if wording is not None:
        return WhoisAnswer("error", wording)
    matched, problem = _not_found(text, domain, tld)
    if matched:
        if problem is not None:
            return WhoisAnswer("error", problem)
        return WhoisAnswer("not_found", "not registered (the registry's not-found wording)")
    if not _meaningful(text):
        return WhoisAnswer("error", "answer has only comments (no record, no known wording)")
    if not (_names_domain(text, domain) or _domain_line(text, domain)):
        return WhoisAnswer("error", f"answer does not name {domain} (no record, no known wording)")
    fields, library_day_first = _extract(text, domain if wording is None else f"x.{tld}", tld)
    day_first = DAY_FIRST.get(tld, library_day_first)
    problems: list[str] = []

    def date(name: _Field) -> datetime | None:
        raws = fields.get(name)
        if not raws:
            return None
        if raws[0].strip().lower() in _NO_DATE:
            return None
        value = parse_whois_date(raws[0], day_first)
        if value is None:
            problems.append(f"unreadable or ambiguous {name} date {raws[0][:40]!r}")
        return value

    created, expires, changed = date("created"), date("expires"), date("changed")
    status = normalize_whois_status(fields.get("status", ()))
    nameservers = tuple(
        dict.fromkeys(
            ns.lower().rstrip(".")
            for ns in fields.get("nameservers", ())
            if re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z0-9-]+\.?", ns)
        )
    )
    if not (created or expires or changed or status or nameservers or _domain_line(text, domain)):
        return WhoisAnswer(
            "error", f"answer names {domain} but no record field could be read from it"
        )
    parts = [f"status {', '.join(status) or '(none)'}"]
    parts.append(f"expires {expires.date()}" if expires else "no expiration date")
    if created is not None:
        parts.append(f"registered {created.date()}")
    parts.extend(problems)
    return WhoisAnswer(
        "record",
        "; ".join(parts),
        created=created,
        expires=expires,
        changed=changed,
        status=status,
        nameservers=nameservers,
        problems=tuple(problems),
    )


def _domain_line(text: str, domain: str) -> bool:
    """The registry's own "this is the record of <domain>" line (``domain: x``,
    ``[Domain Name] X``, ``Query: x``; DNS.be's old format names the label only)."""
    names = [re.escape(domain)]
    if domain.endswith(".be"):
        names.append(re.escape(domain.removesuffix(".be")))
    pattern = re.compile(
        r"^\s*(?:[a-z]\.\s*)?\[?(?:domain(?: ?name)?|domainname|nombre de dominio|query)\]?"
        rf"\s*[:.]*\s*(?:{'|'.join(names)})\.?:?\s*$",
        re.IGNORECASE | re.MULTILINE,
    )
    return (
        pattern.search(text) is not None
        or re.search(rf"^{re.escape(domain)}:\s*$", text, re.IGNORECASE | re.MULTILINE) is not None
    )
