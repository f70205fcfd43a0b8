"""Metadata fields → every address in them, or the exact text that is not one.

``Author-email`` is an RFC 5322 address list: display names, quoted names with
commas, comments, sometimes groups. The list is split at top-level commas (and
semicolons, which people use too) without touching quoted strings, comments or
angle brackets; each element is then read by :func:`lapsewatch.domains.parse`.
Anything that is not an address — ``name at domain dot com``, ``name[at]host``,
a bare name — is reported as unparseable with the text as written. It is never
"repaired": a guessed address would be checked in place of the real one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lapsewatch import domains

__all__ = ["Extracted", "extract", "split_list"]

_BRACKETED_AT = re.compile(r"[\[({<_-]\s*(at|@)\s*[\])}>_-]", re.IGNORECASE)
_WORD_AT = re.compile(r"\s(at|@)\s", re.IGNORECASE)
_WORD_DOT = re.compile(r"[\s\[({<_-]dot[\s\])}>_-]", re.IGNORECASE)
_GROUP = re.compile(r'^\s*([^:"<>@,]*):(.*?);?\s*$', re.DOTALL)
_NAME_ONLY_FIELDS = frozenset({"author", "maintainer", "contributors"})
"""Fields that normally hold names (npm's ``author``/``contributors`` strings too)."""


@dataclass(frozen=True)
class Extracted:
    """One element of an address field: a parsed address, or why it is not one."""

    field: str
    text: str
    """The element as written in the metadata."""
    parsed: domains.EmailDomain | None = None
    problem: str | None = None

    @property
    def address(self) -> str:
        """The address to report: canonical when parsed, the raw text otherwise."""
        if self.parsed is not None and self.parsed.address is not None:
            return self.parsed.address
        return self.text


def split_list(value: str) -> list[str]:
    """Top-level elements of an address list; quotes, comments and ``<...>`` are kept whole."""
    group = _GROUP.match(value)
    if group and "<" not in group.group(1):
        value = group.group(2)  # "Team: a@x, b@y;" → "a@x, b@y"
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    depth = angle = 0
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"' and not depth:
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char == "<" and not depth:
            angle += 1
        elif char == ">" and angle and not depth:
            angle -= 1
        elif char in ",;" and not depth and not angle:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _looks_obfuscated(text: str) -> bool:
    """``a[at]b.c``, ``a (at) b``, ``a at b dot c``: an address spelled to dodge scrapers."""
    return bool(_BRACKETED_AT.search(text)) or bool(
        _WORD_AT.search(f" {text} ") and _WORD_DOT.search(f" {text} ")
    )


def _without_comments(text: str) -> str:
    """Drop RFC 5322 comments (``(...)``, nested) outside quoted strings."""
    kept: list[str] = []
    quoted = escaped = False
    depth = 0
    for char in text:
        if depth:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            continue
        if quoted:
            kept.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
            kept.append(char)
        elif char == "(":
            depth = 1
        else:
            kept.append(char)
    return " ".join("".join(kept).split())


def _element(field: str, text: str, providers: domains.FreeProviders | None) -> Extracted:
    if "@" not in text:
        if _looks_obfuscated(text):
            why = "obfuscated address: not read, since a guessed address could be the wrong one"
        else:
            why = "not an email address (no '@')"
        return Extracted(field, text, problem=why)
    try:
        parsed = domains.parse(_without_comments(text), free_providers=providers)
    except domains.DomainError as exc:
        return Extracted(field, text, problem=f"invalid address: {exc}")
    if parsed.address is None:
        return Extracted(field, text, problem="not an email address (no '@')")
    return Extracted(field, text, parsed=parsed)


def extract(
    field: str, value: str, *, free_providers: domains.FreeProviders | None = None
) -> list[Extracted]:
    """Every element of ``value``; an ``Author``/``Maintainer`` name without ``@`` is no element.

    Those two fields normally hold names; only old packages put addresses there,
    so a plain name is not reported as an unparseable address.
    """
    found = []
    for text in split_list(value):
        if field in _NAME_ONLY_FIELDS and "@" not in text and not _looks_obfuscated(text):
            continue
        found.append(_element(field, text, free_providers))
    return found
