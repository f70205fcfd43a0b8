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

This module holds that decision; the wordings are in
:mod:`~lapsewatch.sources.whois_wordings`, the per-TLD field rules in
:mod:`~lapsewatch.sources.whois_fields` and the strict date reading in
:mod:`~lapsewatch.sources.whois_dates`; their public names are still importable
from here. Nothing here raises for a hostile text: every failure of the library
becomes a parse error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from lapsewatch.sources.whois_dates import DAY_FIRST, parse_whois_date
from lapsewatch.sources.whois_fields import FieldName, extract_fields
from lapsewatch.sources.whois_wordings import (
    ERROR_PATTERNS,
    NOT_FOUND,
    error_wording,
    normalize_whois_status,
)

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


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _names_domain(text: str, domain: str) -> bool:
    """Whether ``domain`` stands in ``text`` as a whole name (not inside a longer one)."""
    if not (text.isascii() and domain.isascii()):  # lower() would move the offsets
        pattern = rf"(?<![A-Za-z0-9.-]){re.escape(domain)}(?![A-Za-z0-9-])"
        return re.search(pattern, text, re.IGNORECASE) is not None
    # A plain search: a pattern per domain would be compiled for every answer.
    haystack, needle = text.lower(), domain.lower()
    at = haystack.find(needle)
    while at >= 0:
        end = at + len(needle)
        before = haystack[at - 1] if at else " "
        after = haystack[end] if end < len(haystack) else " "
        if before not in _NAME_CHARS and before != "." and after not in _NAME_CHARS:
            return True
        at = haystack.find(needle, at + 1)
    return False


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
    fields, library_day_first = extract_fields(text, domain if wording is None else f"x.{tld}", tld)
    day_first = DAY_FIRST.get(tld, library_day_first)
    problems: list[str] = []

    def date(name: FieldName) -> datetime | None:
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
