"""Finding the raw field values (dates, status, name servers) in a WHOIS answer.

Which label carries which field comes from the per-TLD regular expressions of
the ``python-whois`` package (``whois.parser``); where they fall short
(:data:`_RULES`), our own per-TLD rules come first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import whois.parser as _pw  # type: ignore[import-untyped]

__all__ = ["FieldName", "extract_fields"]


# --- fields, per TLD ----------------------------------------------------------------

FieldName = Literal["created", "expires", "changed", "status", "nameservers"]


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    first_only: bool = True


def _rule(pattern: str, *, every: bool = False) -> _Rule:
    return _Rule(re.compile(pattern, re.IGNORECASE | re.MULTILINE), first_only=not every)


_RULES: Mapping[str, Mapping[FieldName, tuple[_Rule, ...]]] = {
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


_LIBRARY_KEYS: Mapping[FieldName, str] = {
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


def extract_fields(
    text: str, domain: str, tld: str
) -> tuple[dict[FieldName, list[str]], bool | None]:
    library, library_day_first = _library_regexes(domain)
    fields: dict[FieldName, list[str]] = {}
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
