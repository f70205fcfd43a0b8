"""Email address or host → the registrable domain whose lapse would hand over the address.

Warehouse uses ``address.split("@")[-1].lower()``: ``alice@mail.corp.co.uk`` and
``alice@corp.co.uk`` then count as two domains, ``bücher.example`` is never matched
with ``xn--bcher-kva.example``, and ``gmail.com`` is checked like any other domain.
What an attacker can *buy* is the registrable domain, so that is what we check: the
host is mapped with UTS 46, encoded with IDNA 2008 and cut down with the ICANN
section of a Public Suffix List snapshot shipped in the package (no network I/O,
and the same answer on every machine until the snapshot is updated on purpose).

Every malformed input raises :class:`DomainError` and nothing else, because the
callers feed it whatever users and package metadata contain.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.resources import files

import idna
from publicsuffixlist import PublicSuffixList

__all__ = [
    "DomainError",
    "EmailDomain",
    "FreeProviders",
    "load_free_providers",
    "normalize_host",
    "parse",
    "registrable_domain",
    "to_unicode",
]

# Longer input is not an address anyone can verify (RFC 5322 lines stop at 998
# characters); refusing it early bounds the work done on hostile input.
MAX_INPUT_LENGTH = 1024
_MAX_LABEL = 63
_MAX_NAME = 253

_DATA = files("lapsewatch") / "data"
_PSL_FILE = "public_suffix_list.dat"
_FREE_PROVIDERS_FILE = "free_providers.txt"

_QUOTED_LOCAL = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_UNQUOTED_LOCAL = re.compile(r'[^\s"(),:;<>@\[\\\]]+')
_LDH_LABEL = re.compile(r"[a-z0-9-]+")
"""Lower-case letters, digits and hyphens: nearly every label of a real mail host."""


class DomainError(ValueError):
    """The one error for unusable input, so callers need a single ``except``."""


@dataclass(frozen=True, slots=True)
class EmailDomain:
    """One parsed input: what was given and the domain that decides its fate."""

    input: str
    address: str | None
    host: str
    domain: str
    free_provider: bool


# --------------------------------------------------------------------------- PSL


@functools.cache
def _psl() -> PublicSuffixList:
    """The packaged PSL, ICANN section only.

    Private-section entries (``github.io``, ``blogspot.com``) are suffixes whose
    owner hands out sub-domains; nobody can buy ``alice.github.io`` once it
    "lapses", but whoever owns ``github.io`` controls all of it, so
    ``github.io`` is the domain to watch.
    """
    text = (_DATA / _PSL_FILE).read_text(encoding="utf-8")
    return PublicSuffixList(text.splitlines(), accept_unknown=True, only_icann=True)


def _is_known_public_suffix(host: str) -> bool:
    return bool(_psl().is_public(host, accept_unknown=False))


def _reduce(host: str) -> str:
    """Cut a normalised host to its registrable domain."""
    domain = _psl().privatesuffix(host)
    if domain is None:
        raise DomainError(f"{host!r} is a public suffix: names are registered under it, not as it")
    return str(domain)


# ------------------------------------------------------------------ validation


def _check_text(text: object, what: str, *, strip: bool) -> str:
    """Reject what no later step should ever see: non-text, huge, empty, control chars."""
    if not isinstance(text, str):
        raise DomainError(f"{what} must be a string, not {type(text).__name__}")
    if len(text) > MAX_INPUT_LENGTH:
        raise DomainError(f"{what} is {len(text)} characters long; the limit is {MAX_INPUT_LENGTH}")
    if strip:
        text = text.strip()
    if not text:
        raise DomainError(f"empty {what}")
    for position, char in enumerate(text, 1):
        category = unicodedata.category(char)
        if category == "Cc":
            raise DomainError(
                f"control character U+{ord(char):04X} at position {position} in {what} {text!r}"
            )
        if category == "Cs":
            raise DomainError(
                f"lone surrogate U+{ord(char):04X} at position {position} in {what} {text!r}"
            )
    return text


_JOINERS = frozenset({"\u200c", "\u200d"})
"""ZERO WIDTH NON-JOINER and JOINER: the format characters IDNA allows (CONTEXTJ)."""
_BIDI_CONTROLS = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})


def _check_format(text: str, what: str, *, host: bool = False) -> None:
    """Refuse invisible format characters (Unicode Cf) in a local part or host.

    A right-to-left override or a zero-width character makes an address read
    differently from what it is (in an admin's list, in a notice). Only the
    joiners IDNA allows pass, and, in a host, the ones IDNA mapping drops anyway
    (soft hyphen): the stored name never contains them.
    """
    for position, char in enumerate(text, 1):
        if unicodedata.category(char) != "Cf" or char in _JOINERS:
            continue
        if host and _dropped_by_idna(char):
            continue
        name = unicodedata.name(char, "unnamed")
        kind = (
            "bidirectional control"
            if char in "\u200e\u200f\u061c" or unicodedata.bidirectional(char) in _BIDI_CONTROLS
            else "format character"
        )
        raise DomainError(
            f"{kind} U+{ord(char):04X} ({name}) at position {position} in {what} {text!r}: "
            "invisible characters are not accepted in an address"
        )


def _dropped_by_idna(char: str) -> bool:
    try:
        return idna.uts46_remap(char, std3_rules=True) == ""
    except ValueError:
        return False


def _unquoted(text: str, wanted: str) -> dict[str, list[int]]:
    """Positions of ``wanted`` characters outside RFC 5322 quoted strings."""
    found: dict[str, list[int]] = {char: [] for char in wanted}
    in_quotes = False
    escaped = False
    for position, char in enumerate(text):
        if in_quotes:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char in found:
            found[char].append(position)
    if in_quotes:
        raise DomainError(f"unterminated quoted string in {text!r}")
    return found


def _check_local(local: str) -> None:
    """Accept a dot-atom-ish or quoted local part; its case is kept, its content not judged.

    Only what would make the split at ``@`` doubtful is refused: the mailbox
    itself is the mail server's business, not ours.
    """
    if local.startswith('"'):
        if not _QUOTED_LOCAL.fullmatch(local):
            raise DomainError(f"local part {local!r}: text after the closing quote")
    elif not _UNQUOTED_LOCAL.fullmatch(local):
        raise DomainError(
            f"local part {local!r} contains spaces or special characters; quote it if meant"
        )


def _ip_error(candidate: str, original: str) -> DomainError | None:
    if ":" not in candidate and not candidate.replace(".", "").isdigit():
        return None  # an IP address has colons (v6) or is digits and dots (v4)
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return None
    return DomainError(f"{original!r} is an IP address, not a domain name")


def _alabel(label: str, host: str) -> str:
    """One UTS-46-mapped label → its A-label, or a DomainError that names the label."""
    if label.startswith("-") or label.endswith("-"):
        raise DomainError(f"label {label!r} in {host!r} starts or ends with a hyphen")
    if label.isascii() and len(label) > _MAX_LABEL:
        raise DomainError(
            f"label {label[:20]!r}… in host is {len(label)} octets long; the limit is {_MAX_LABEL}"
        )
    if label[2:4] != "--" and _LDH_LABEL.fullmatch(label):
        # IDNA 2008 allows such a label as it is (neither an A-label nor hyphens in
        # the 3rd and 4th place): idna.alabel would return it unchanged, much slower.
        return label
    try:
        encoded = idna.alabel(label).decode("ascii")
    except ValueError as exc:  # IDNAError and friends are UnicodeError → ValueError
        if "too long" in str(exc).lower():
            raise DomainError(
                f"label {label!r} in {host!r} is longer than {_MAX_LABEL} octets once encoded"
            ) from exc
        kind = "not a valid A-label" if label.startswith("xn--") else "not valid under IDNA"
        raise DomainError(f"label {label!r} in {host!r} is {kind}: {exc}") from exc
    return encoded


def _host_labels(host: object) -> list[str]:
    """Validated A-labels of a host, without the root label; no PSL involved."""
    text = _check_text(host, "host", strip=False)
    _check_format(text, "host", host=True)
    if text.startswith("[") or text.endswith("]"):
        raise DomainError(f"{text!r} is an IP literal, not a domain name")
    error = _ip_error(text.removesuffix("."), text)
    if error is not None:
        raise error
    try:
        mapped = idna.uts46_remap(text, std3_rules=True)
    except ValueError as exc:
        raise DomainError(f"invalid character in host {text!r}: {exc}") from exc
    if mapped == ".":
        raise DomainError(f"host {text!r} is only the DNS root, not a domain name")
    if not mapped:
        raise DomainError(f"host {text!r} is empty once IDNA mapping drops ignored characters")

    labels = mapped.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # one trailing dot = the DNS root, same name
    if "" in labels:
        raise DomainError(f"empty label in host {text!r} (leading dot or '..')")

    encoded = [_alabel(label, text) for label in labels]
    ascii_host = ".".join(encoded)
    if len(ascii_host) > _MAX_NAME:
        raise DomainError(
            f"host {text[:30]!r}… is {len(ascii_host)} octets long; the limit is {_MAX_NAME}"
        )
    if all(label.isdigit() for label in encoded):
        raise DomainError(f"{text!r} looks like an IP address, not a domain name")
    error = _ip_error(ascii_host, text)
    if error is not None:
        raise error
    if encoded[-1].isdigit():
        raise DomainError(f"top-level label {encoded[-1]!r} of {text!r} is all-numeric")
    if len(encoded) == 1:
        if _is_known_public_suffix(ascii_host):
            raise DomainError(
                f"{ascii_host!r} is a public suffix (a top-level domain), not a registrable domain"
            )
        raise DomainError(f"single-label host {ascii_host!r}: a mail domain needs a dot")
    return encoded


# ------------------------------------------------------------------ public API


def normalize_host(host: str) -> str:
    """Canonical ASCII form, so one domain has one spelling in the store and in lookups.

    Single-label names and IP addresses are refused here already: no mail domain
    looks like that, and they would only fail later with a vaguer message.
    """
    return ".".join(_host_labels(host))


def registrable_domain(host: str) -> str:
    """The name someone could buy once it lapses: everything a host depends on."""
    return _reduce(normalize_host(host))


def to_unicode(domain: str) -> str:
    """Readable form for people; falls back label by label because display must not fail."""
    try:
        if not isinstance(domain, str):
            return repr(domain)
        labels = []
        for label in domain.split("."):
            if label[:4].lower() == "xn--":
                try:
                    labels.append(idna.ulabel(label))
                except ValueError:
                    labels.append(label)
            else:
                labels.append(label)
        return ".".join(labels)
    except Exception:  # display code must never break a report
        return domain if isinstance(domain, str) else "?"


def _split(text: object) -> tuple[str | None, str, str]:
    """(address, host, domain) of an address or bare host; no provider lookup."""
    spec = _check_text(text, "input", strip=True)
    marks = _unquoted(spec, "<>")
    need_at = False
    if marks["<"] or marks[">"]:
        if len(marks["<"]) > 1 or len(marks[">"]) > 1:
            raise DomainError(f"several '<' or '>' outside quotes in {spec!r}")
        if not marks["<"] or not marks[">"]:
            raise DomainError(f"unbalanced '<' and '>' in {spec!r}")
        start, end = marks["<"][0], marks[">"][0]
        if end != len(spec) - 1 or start > end:
            raise DomainError(f"expected 'Name <address>' with '>' at the end, got {spec!r}")
        spec = spec[start + 1 : end].strip()
        if not spec:
            raise DomainError("empty address between '<' and '>'")
        need_at = True

    ats = _unquoted(spec, "@")["@"]
    if not ats:
        if need_at:
            raise DomainError(f"no '@' in <{spec}>: expected an email address")
        host = normalize_host(spec)
        return None, host, _reduce(host)
    if len(ats) > 1:
        raise DomainError(f"several '@' outside quotes in {spec!r}")
    local, domain_part = spec[: ats[0]], spec[ats[0] + 1 :]
    if not local:
        raise DomainError(f"empty local part before '@' in {spec!r}")
    if not domain_part:
        raise DomainError(f"no domain after '@' in {spec!r}")
    _check_format(local, "local part")
    _check_local(local)
    if domain_part.startswith("["):
        raise DomainError(f"{domain_part!r} is an IP literal, not a domain name")
    host = normalize_host(domain_part)
    return f"{local}@{host}", host, _reduce(host)


def parse(text: str, *, free_providers: FreeProviders | None = None) -> EmailDomain:
    """Read an address (``a@x``, ``Name <a@x>``, ``"Q, N" <a@x>``) or a bare host.

    A bare host gives ``address=None``; its domain is computed the same way, so
    ``parse("mail.x.org").domain == parse("a@mail.x.org").domain``.
    """
    address, host, domain = _split(text)
    providers = free_providers if free_providers is not None else _packaged_free_providers()
    return EmailDomain(
        input=text,
        address=address,
        host=host,
        domain=domain,
        free_provider=domain in providers.domains,
    )


# --------------------------------------------------------------- free providers


def _provider_entry(entry: str, where: str) -> str:
    """A list entry → its canonical registrable domain; sub-domains are refused.

    Reducing ``mail.example.com`` to ``example.com`` silently would exempt a
    whole domain from checks, so the list must say exactly what it means.
    """
    try:
        host = normalize_host(entry)
        domain = _reduce(host)
    except DomainError as exc:
        raise DomainError(f"{where}: {exc}") from exc
    if domain != host:
        raise DomainError(
            f"{where}: {entry!r} is not a registrable domain (did you mean {domain!r}?)"
        )
    return domain


class FreeProviders:
    """Domains whose addresses are never checked: they belong to operators that do not lapse.

    Immutable; build one from the packaged list, a file or any iterable, and
    combine them with :meth:`union` to extend rather than replace the default.
    """

    __slots__ = ("_domains",)

    def __init__(self, domains: Iterable[str] = ()) -> None:
        self._domains = frozenset(
            _provider_entry(entry, f"free provider entry {index}")
            for index, entry in enumerate(domains, 1)
        )

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<lines>") -> FreeProviders:
        """Parse the list format: one domain per line, ``#`` comments, blank lines."""
        entries = []
        for number, line in enumerate(lines, 1):
            entry = line.split("#", 1)[0].strip()
            if entry:
                entries.append(_provider_entry(entry, f"{source}:{number}"))
        return cls(entries)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> FreeProviders:
        """Read a list file (UTF-8); OSError propagates, bad entries raise DomainError."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_lines(handle, os.fspath(path))

    @classmethod
    def packaged(cls) -> FreeProviders:
        """The list shipped in ``lapsewatch/data/free_providers.txt`` (parsed once)."""
        return _packaged_free_providers()

    @property
    def domains(self) -> frozenset[str]:
        return self._domains

    def union(self, other: FreeProviders | Iterable[str]) -> FreeProviders:
        extra = other.domains if isinstance(other, FreeProviders) else FreeProviders(other).domains
        return FreeProviders(self._domains | extra)

    def is_free(self, text: str) -> bool:
        """Whether an address or host is on a listed domain; unparsable input is not."""
        if text in self._domains:
            return True
        try:
            return _split(text)[2] in self._domains
        except DomainError:
            return False

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and self.is_free(item)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._domains))

    def __len__(self) -> int:
        return len(self._domains)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FreeProviders):
            return NotImplemented
        return self._domains == other._domains

    def __hash__(self) -> int:
        return hash(self._domains)

    def __repr__(self) -> str:
        return f"FreeProviders({len(self._domains)} domains)"


@functools.cache
def _packaged_free_providers() -> FreeProviders:
    text = (_DATA / _FREE_PROVIDERS_FILE).read_text(encoding="utf-8")
    return FreeProviders.from_lines(text.splitlines(), f"lapsewatch/data/{_FREE_PROVIDERS_FILE}")


def load_free_providers(path: str | os.PathLike[str] | None = None) -> FreeProviders:
    """The packaged list, or the list in ``path`` instead of it (not on top of it)."""
    if path is None:
        return _packaged_free_providers()
    return FreeProviders.from_file(path)
