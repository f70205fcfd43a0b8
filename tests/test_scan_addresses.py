"""Addresses out of Author-email / Maintainer-email: every one, and nothing guessed."""

from __future__ import annotations

import pytest

from lapsewatch.scan.addresses import extract, split_list


def addresses(value: str, field: str = "author_email") -> list[tuple[str, str | None]]:
    return [(e.address, e.parsed.domain if e.parsed else None) for e in extract(field, value)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a@x.com", [("a@x.com", "x.com")]),
        ("Jane Doe <jane@mail.x.co.uk>", [("jane@mail.x.co.uk", "x.co.uk")]),
        ('"Doe, Jane" <jane@x.com>, bob@y.org', [("jane@x.com", "x.com"), ("bob@y.org", "y.org")]),
        ("bob@y.org (Bob, the builder)", [("bob@y.org", "y.org")]),
        ("Team: a@x.com, b@y.org;", [("a@x.com", "x.com"), ("b@y.org", "y.org")]),
        ("a@x.com; b@y.org", [("a@x.com", "x.com"), ("b@y.org", "y.org")]),
        ("A <a@X.COM>,", [("a@x.com", "x.com")]),
        ("b@bücher.example", [("b@xn--bcher-kva.example", "xn--bcher-kva.example")]),
        ('"a@b" <real@x.com>', [("real@x.com", "x.com")]),
    ],
)
def test_addresses(value: str, expected: list[tuple[str, str | None]]) -> None:
    assert addresses(value) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("jane at example dot com", "obfuscated"),
        ("jane[at]example.com", "obfuscated"),
        ("jane (at) example (dot) com", "obfuscated"),
        ("jane_at_example.com", "obfuscated"),
        ("Jane Doe", "not an email address"),
        ("root@localhost", "invalid address: single-label host"),
        ("bad@@x.test", "invalid address: several '@'"),
        ("a@[127.0.0.1]", "invalid address"),
        ("John Smith john@x.com", "invalid address"),
        ("<>", "not an email address"),
    ],
)
def test_unparseable_is_reported_as_written(value: str, problem: str) -> None:
    [found] = extract("author_email", value)
    assert found.parsed is None
    assert found.address == value
    assert found.problem is not None
    assert problem in found.problem


def test_free_provider_is_flagged() -> None:
    [found] = extract("maintainer_email", "Bob <bob@GMail.com>")
    assert found.parsed is not None
    assert found.parsed.free_provider
    assert found.address == "bob@gmail.com"


def test_names_in_author_fields_are_not_addresses() -> None:
    assert extract("author", "Jane Doe, Data at Scale Team") == []
    assert addresses("Jane <jane@x.com>", "author") == [("jane@x.com", "x.com")]
    assert [e.problem is not None for e in extract("maintainer", "jane[at]x.com")] == [True]


def test_split_keeps_quotes_comments_and_brackets_whole() -> None:
    assert split_list('"a, b" <a@x.com>, c@y.org (c, d), <e,f@z.org>') == [
        '"a, b" <a@x.com>',
        "c@y.org (c, d)",
        "<e,f@z.org>",
    ]
    assert split_list(" , ,") == []
