"""Tests for lapsewatch.domains: examples, malformed input, and properties."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import random
import re
import unicodedata
from importlib.resources import files
from pathlib import Path

import idna
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lapsewatch import domains
from lapsewatch.domains import (
    DomainError,
    EmailDomain,
    FreeProviders,
    load_free_providers,
    normalize_host,
    parse,
    registrable_domain,
    to_unicode,
)

# ----------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("text", "address", "host", "domain"),
    [
        ("a@x.org", "a@x.org", "x.org", "x.org"),
        ("Alice <a@x.org>", "a@x.org", "x.org", "x.org"),
        ('"Quoted, Name" <a@x.org>', "a@x.org", "x.org", "x.org"),
        ('"Odd <name> @ here" <a@x.org>', "a@x.org", "x.org", "x.org"),
        ('"A \\"B\\"" <a@x.org>', "a@x.org", "x.org", "x.org"),
        ("alice@example.com <a@x.org>", "a@x.org", "x.org", "x.org"),
        ("  <a@x.org>  ", "a@x.org", "x.org", "x.org"),
        ("Alice.Smith@Mail.X.ORG", "Alice.Smith@mail.x.org", "mail.x.org", "x.org"),
        ('"a@b"@x.org', '"a@b"@x.org', "x.org", "x.org"),
        ('"john doe"@x.org', '"john doe"@x.org', "x.org", "x.org"),
        ("a+tag@x.org\n", "a+tag@x.org", "x.org", "x.org"),
        ("x.org", None, "x.org", "x.org"),
        ("mail.x.org.", None, "mail.x.org", "x.org"),
        ("mail.corp.co.uk", None, "mail.corp.co.uk", "corp.co.uk"),
        ("a.b.example.com", None, "a.b.example.com", "example.com"),
        ("bücher.example", None, "xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", None, "xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", None, "xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.EXAMPLE", None, "xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a@bücher.example", "a@xn--bcher-kva.example", "xn--bcher-kva.example", None),
        ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v", "xn--fsqu00a.xn--4rr70v", None),
        ("a@x\uff0eorg", "a@x.org", "x.org", "x.org"),  # fullwidth full stop
        ("a@x\u3002org", "a@x.org", "x.org", "x.org"),  # ideographic full stop
        ("a@x\uff61org\u3002", "a@x.org", "x.org", "x.org"),  # halfwidth + trailing
        ("a@\uff58\uff0e\uff4f\uff52\uff47", "a@x.org", "x.org", "x.org"),  # fullwidth letters
        ("a@mail.x.test", "a@mail.x.test", "mail.x.test", "x.test"),
        ("deep.a.b.c.invalid", None, "deep.a.b.c.invalid", "c.invalid"),
        ("alice.github.io", None, "alice.github.io", "github.io"),
        ("me.blogspot.com", None, "me.blogspot.com", "blogspot.com"),
        ("city.kobe.jp", None, "city.kobe.jp", "city.kobe.jp"),  # PSL exception rule
        ("a.b.kobe.jp", None, "a.b.kobe.jp", "a.b.kobe.jp"),  # PSL wildcard rule
        ("www.ck", None, "www.ck", "www.ck"),
    ],
)
def test_parse_examples(text: str, address: str | None, host: str, domain: str | None) -> None:
    result = parse(text)
    assert result.input == text
    assert result.address == address
    assert result.host == host
    assert result.domain == (domain if domain is not None else host)


def test_result_is_frozen() -> None:
    result = parse("a@x.org")
    assert isinstance(result, EmailDomain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.domain = "y.org"  # type: ignore[misc]


def test_bare_domain_and_address_agree() -> None:
    assert parse("mail.x.co.uk").domain == parse("a@mail.x.co.uk").domain == "x.co.uk"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("X.Org", "x.org"),
        ("x.org.", "x.org"),
        ("Mail.Bücher.Example.", "mail.xn--bcher-kva.example"),
        ("straße.de", "xn--strae-oqa.de"),  # non-transitional: ß is kept
        ("co.uk", "co.uk"),  # syntactically fine; registrable_domain refuses it
    ],
)
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("mail.corp.co.uk", "corp.co.uk"),
        ("a.b.example.com", "example.com"),
        ("www.x.test.", "x.test"),
        ("alice.github.io", "github.io"),
        ("example.com", "example.com"),
    ],
)
def test_registrable_domain(host: str, expected: str) -> None:
    assert registrable_domain(host) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty input"),
        ("   \t ", "empty input"),
        ("a@", "no domain after '@'"),
        ("Alice <a@>", "no domain after '@'"),
        ("@x.org", "empty local part"),
        ("a@b@x.org", "several '@'"),
        ("Alice <a@b@x.org>", "several '@'"),
        ("a@[1.2.3.4]", "IP literal"),
        ("a@[IPv6:::1]", "IP literal"),
        ("1.2.3.4", "IP address"),
        ("a@1.2.3.4", "IP address"),
        ("a@1.2.3.4.", "IP address"),
        ("::1", "IP address"),
        ("a@\uff11.\uff12.\uff13.\uff14", "IP address"),
        ("localhost", "single-label"),
        ("a@localhost", "single-label"),
        ("a@localhost.", "single-label"),
        ("com", "public suffix"),
        ("a@com", "public suffix"),
        ("co.uk", "public suffix"),
        ("a@co.uk", "public suffix"),
        ("kobe.jp", "public suffix"),
        ("foo.ck", "public suffix"),
        ("a@" + "a" * 64 + ".com", "limit is 63"),
        ("a@" + "ü" * 60 + ".com", "longer than 63 octets"),
        ("a@" + ".".join(["a" * 60] * 5) + ".com", "limit is 253"),
        ("a@x_y.org", "invalid character"),
        ("a@x!.org", "invalid character"),
        ("a@x y.org", "invalid character"),
        ("a@x:25.org", "invalid character"),
        ("a@\u2488com", "invalid character"),
        ("a@-x.org", "hyphen"),
        ("a@x-.org", "hyphen"),
        ("a@ab--cd.org", "3rd and 4th"),
        ("a@xn--zz.org", "not a valid A-label"),
        ("a@xn---bbk.org", "not a valid A-label"),
        ("a@\u0301x.org", "not valid under IDNA"),  # leading combining mark
        ("a@a..b.org", "empty label"),
        ("a@.x.org", "empty label"),
        ("a@x.org..", "empty label"),
        ("a@.", "DNS root"),
        ("a@\u00ad", "empty once IDNA mapping"),
        ("a@x\x00.org", "control character U+0000"),
        ("a\x07@x.org", "control character U+0007"),
        ("a@x.org\x7f", "control character U+007F"),
        ("a\n@x.org", "control character U+000A"),
        ("a@x.123", "all-numeric"),
        ("a b@x.org", "local part"),
        ("a(b)@x.org", "local part"),
        ('"a"b@x.org', "local part"),
        ('"abc <a@x.org>', "unterminated quoted string"),
        ("Alice <x.org>", "no '@'"),
        ("Alice <>", "empty address"),
        ("A <b> <c@d.org>", "several '<' or '>'"),
        ("<a@x.org> trailing", "'>' at the end"),
        ("a@x.org>", "unbalanced '<' and '>'"),
        ("Alice <a@x.org", "unbalanced '<' and '>'"),
        ("a@x.org> <", "'>' at the end"),
        ("x" * 2000 + "@x.org", "limit is 1024"),
    ],
)
def test_malformed(text: str, message: str) -> None:
    with pytest.raises(DomainError, match="(?s).*" + _escape(message)):
        parse(text)


def _escape(text: str) -> str:
    return re.escape(text)


def test_domain_error_is_value_error() -> None:
    assert issubclass(DomainError, ValueError)


def test_non_string_input_is_domain_error() -> None:
    with pytest.raises(DomainError, match="must be a string"):
        parse(None)  # type: ignore[arg-type]
    with pytest.raises(DomainError, match="must be a string"):
        normalize_host(b"x.org")  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["localhost", "1.2.3.4", "[::1]", "x..org", "", " x.org"])
def test_normalize_host_refuses(host: str) -> None:
    with pytest.raises(DomainError):
        normalize_host(host)


@pytest.mark.parametrize("host", ["com", "co.uk", "net.", "CO.UK.", "foo.ck"])
def test_registrable_domain_refuses_public_suffixes(host: str) -> None:
    with pytest.raises(DomainError, match="public suffix"):
        registrable_domain(host)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("xn--bcher-kva.example", "bücher.example"),
        ("mail.xn--fsqu00a.xn--4rr70v", "mail.例子.广告"),
        ("XN--BCHER-KVA.example", "bücher.example"),
        ("xn--zz.example", "xn--zz.example"),  # invalid A-label stays as it is
        ("plain.example", "plain.example"),
        ("", ""),
        ("a..b", "a..b"),
    ],
)
def test_to_unicode(domain: str, expected: str) -> None:
    assert to_unicode(domain) == expected


def test_to_unicode_never_raises_on_non_strings() -> None:
    assert isinstance(to_unicode(None), str)  # type: ignore[arg-type]


# ----------------------------------------------------------- free providers


@pytest.mark.parametrize(
    "text",
    [
        "x@gmail.com",
        "x@MAIL.GMAIL.COM",
        "x@gmail.com.",
        "Someone <x@GMail.com>",
        "\uff58@\uff47\uff4d\uff41\uff49\uff4c\uff0e\uff43\uff4f\uff4d",
        "123+me@users.noreply.github.com",
        "a@hotmail.co.uk",
        "a@yahoo.co.jp",
        "a@proton.me",
        "a@vip.qq.com",
        "gmail.com",
    ],
)
def test_free_provider_addresses(text: str) -> None:
    assert parse(text).free_provider
    assert text in load_free_providers()


@pytest.mark.parametrize("text", ["a@x.org", "a@gmail.com.evil.test", "a@notgmail.com"])
def test_not_free_provider(text: str) -> None:
    assert not parse(text).free_provider
    assert text not in load_free_providers()


def test_packaged_list_size_and_shape() -> None:
    providers = load_free_providers()
    assert 80 <= len(providers) <= 150
    for domain in ["gmail.com", "outlook.com", "icloud.com", "web.de", "qq.com", "github.com"]:
        assert domain in providers.domains
    for domain in providers:
        assert registrable_domain(domain) == domain
    assert load_free_providers() is FreeProviders.packaged()


def test_packaged_list_file_is_clean() -> None:
    """Every non-comment line is already in canonical form and listed once."""
    text = (files("lapsewatch") / "data" / "free_providers.txt").read_text(encoding="utf-8")
    entries = [line.strip() for line in text.splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    assert len(entries) == len(set(entries))
    assert all(normalize_host(e) == e for e in entries)


def test_free_providers_from_iterable_and_override() -> None:
    custom = FreeProviders(["Example.COM", "bücher.example"])
    assert custom.domains == {"example.com", "xn--bcher-kva.example"}
    assert parse("a@mail.example.com", free_providers=custom).free_provider
    assert parse("a@BÜCHER.example", free_providers=custom).free_provider
    assert not parse("a@gmail.com", free_providers=custom).free_provider
    assert parse("a@gmail.com", free_providers=FreeProviders()).free_provider is False


def test_free_providers_union() -> None:
    extended = load_free_providers().union(["corp.test"])
    assert "a@corp.test" in extended
    assert "a@gmail.com" in extended
    assert "a@corp.test" not in load_free_providers()
    assert len(extended) == len(load_free_providers()) + 1
    assert extended == load_free_providers().union(FreeProviders(["corp.test"]))
    assert hash(extended) == hash(load_free_providers().union(["corp.test"]))


def test_free_providers_from_file(tmp_path: Path) -> None:
    path = tmp_path / "providers.txt"
    path.write_text(
        "# my list\n\nmail.test   # inline comment\n  BÜCHER.example  \nmail.test\n",
        encoding="utf-8",
    )
    providers = load_free_providers(str(path))
    assert providers.domains == {"mail.test", "xn--bcher-kva.example"}
    assert FreeProviders.from_file(path) == providers
    assert parse("a@x.mail.test", free_providers=providers).free_provider


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("mail.example.com", "not a registrable domain (did you mean 'example.com'?)"),
        ("co.uk", "public suffix"),
        ("not a domain", "invalid character"),
        ("localhost", "single-label"),
    ],
)
def test_free_providers_file_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "providers.txt"
    path.write_text(f"ok.test\n{line}\n", encoding="utf-8")
    with pytest.raises(DomainError, match=_escape(f"{path}:2: ") + ".*" + _escape(message)):
        load_free_providers(str(path))


def test_free_providers_iterable_errors() -> None:
    with pytest.raises(DomainError, match="entry 2"):
        FreeProviders(["ok.test", "a.b.example.com"])


def test_free_providers_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):  # noqa: PT011 - any OSError is fine
        load_free_providers(str(tmp_path / "missing.txt"))


def test_contains_tolerates_junk() -> None:
    providers = load_free_providers()
    assert "" not in providers
    assert "@@@" not in providers
    assert 42 not in providers
    assert providers.is_free("gmail.com")
    assert not providers.is_free("a@[1.2.3.4]")
    assert repr(providers).startswith("FreeProviders(")


# --------------------------------------------------------------- properties

_DOMAINISH = st.text(
    alphabet=st.sampled_from(
        [
            *'abcxyzABCXYZ019-._@ "<>[]',
            "ü",
            "ß",
            "Ü",
            "\u3002",
            "\uff0e",
            "\uff47",
            "\u00ad",
            "\u200d",
        ]
    ),
    max_size=40,
)
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda label: label[2:4] != "--"
)
_TLD = st.sampled_from(["com", "org", "co.uk", "test", "de", "jp", "io", "example"])
_HOSTS = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(_LABEL, min_size=1, max_size=4),
    _TLD,
)


def _check_result(result: EmailDomain) -> None:
    for value in (result.host, result.domain):
        assert value.isascii()
        assert value == value.lower()
        assert not value.endswith(".")
        assert "." in value
    assert result.host == result.domain or result.host.endswith("." + result.domain)


@given(st.text())
@example("a@b@c")
@example("\udcff@x.org")
@example("a@\ufeff.org")
def test_parse_only_raises_domain_error(text: str) -> None:
    try:
        result = parse(text)
    except DomainError:
        return
    _check_result(result)


@given(st.text(max_size=20), _DOMAINISH)
def test_parse_address_only_raises_domain_error(local: str, domain: str) -> None:
    try:
        result = parse(f"{local}@{domain}")
    except DomainError:
        return
    _check_result(result)
    assert result.address is not None
    assert result.address.endswith("@" + result.host)


@given(st.text())
def test_helpers_only_raise_domain_error(text: str) -> None:
    for function in (normalize_host, registrable_domain):
        with contextlib.suppress(DomainError):
            function(text)
    assert isinstance(to_unicode(text), str)
    assert isinstance(text in load_free_providers(), bool)


@given(st.one_of(st.text(), _DOMAINISH, _HOSTS))
def test_idempotent(text: str) -> None:
    try:
        result = parse(text)
    except DomainError:
        return
    assert parse(result.domain).domain == result.domain
    assert parse(result.host).host == result.host
    assert normalize_host(result.host) == result.host
    assert registrable_domain(result.domain) == result.domain


@given(st.one_of(st.text(), _DOMAINISH, _HOSTS))
def test_normalize_host_idempotent(text: str) -> None:
    try:
        host = normalize_host(text)
    except DomainError:
        return
    assert normalize_host(host) == host
    assert host.isascii()
    assert host == host.lower()


@given(_HOSTS)
def test_unicode_round_trip(host: str) -> None:
    try:
        ascii_host = normalize_host(host)
    except DomainError:
        return
    assert normalize_host(to_unicode(ascii_host)) == ascii_host


def _fullwidth(text: str) -> str:
    return "".join(unicodedata.lookup("FULLWIDTH " + unicodedata.name(c)) for c in text)


@given(
    st.sampled_from(sorted(load_free_providers().domains)),
    st.randoms(use_true_random=False),
    st.sampled_from(["", "mail.", "a.b."]),
    st.booleans(),
    st.booleans(),
)
def test_free_provider_detection_is_case_and_idna_insensitive(
    domain: str, rnd: random.Random, prefix: str, trailing_dot: bool, fullwidth: bool
) -> None:
    host = to_unicode(prefix + domain)
    host = "".join(c.upper() if rnd.random() < 0.5 else c for c in host)
    if fullwidth and host.isascii():
        host = _fullwidth(host)
    if trailing_dot:
        host += "."
    assert parse(f"Someone <x@{host}>").free_provider
    assert parse(host).free_provider
    assert host in load_free_providers()


# ------------------------------------------------------------- fast paths


@given(st.one_of(st.from_regex(r"[a-z0-9-]{1,70}", fullmatch=True), st.text(max_size=12)))
@example("xn--bcher-kva")
@example("ab--cd")
@example("-ab")
def test_label_fast_path_agrees_with_idna(label: str) -> None:
    """Plain LDH labels skip ``idna``: same A-label, and refused exactly when idna refuses."""
    try:
        expected: str | None = idna.alabel(label).decode("ascii")
    except ValueError:
        expected = None
    try:
        encoded: str | None = domains._alabel(label, label)
    except DomainError:
        encoded = None
    assert encoded == expected


@given(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"[0-9a-fA-F.:%]{1,40}", fullmatch=True),
        st.ip_addresses().map(str),
    )
)
@example("1.2.3.4")
@example("\u0661.\u0662.\u0663.\u0664")  # Arabic-Indic digits: not an IP
def test_ip_fast_path_agrees_with_ipaddress(text: str) -> None:
    try:
        ipaddress.ip_address(text)
        is_ip = True
    except ValueError:
        is_ip = False
    assert (domains._ip_error(text, text) is not None) == is_ip


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\u202ealice@x.org", "bidirectional control U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("a\u200f@x.org", "bidirectional control U+200F"),
        ("a\u2067b@x.org", "bidirectional control U+2067"),
        ("Alice <\u202eal@x.org>", "U+202E"),
        ("a@x\u202e.org", "bidirectional control U+202E"),
        ("a\u200b@x.org", "format character U+200B (ZERO WIDTH SPACE)"),
        ("a\ufeff@x.org", "format character U+FEFF"),
        ("a@x\U000e0001.org", "format character U+E0001 (LANGUAGE TAG)"),
    ],
)
def test_invisible_format_characters_are_refused(text: str, reason: str) -> None:
    """Issue #11: an address must read as what it is (Unicode Cf refused, with the reason)."""
    with pytest.raises(DomainError, match=re.escape(reason)):
        parse(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("a@\u00adx.org", "a@x.org"),  # soft hyphen: IDNA mapping drops it
        ("a@\u200bx.org", "a@x.org"),  # so it does a zero width space in a host
    ],
)
def test_format_characters_idna_drops_from_a_host_are_accepted(text: str, address: str) -> None:
    assert parse(text).address == address


def test_the_joiners_idna_allows_pass() -> None:
    assert parse("a\u200d@x.org").address == "a\u200d@x.org"
