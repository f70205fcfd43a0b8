"""What a registry's own words mean in a WHOIS answer, as tables per TLD.

Port-43 answers are free text, so an error, a "no such domain" or a status is
only recognised by wordings seen in real answers. They live here, apart from
the code that reads an answer (:mod:`lapsewatch.sources.whois_text`), because
they grow with every new capture.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["ERROR_PATTERNS", "NOT_FOUND", "error_wording", "normalize_whois_status"]


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
