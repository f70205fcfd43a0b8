"""``lapsewatch accounts import`` and ``show``: validation by line, idempotency, security rule."""

from __future__ import annotations

import gc
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from lapsewatch import domains
from lapsewatch.accounts import (
    ImportAborted,
    ImportInputError,
    ImportSummary,
    InputKind,
    import_accounts,
    import_reconcile,
    import_validate,
    import_write,
    importer,
)
from lapsewatch.commands.accounts import accounts_app
from lapsewatch.store import Account, Domain, Email, Event
from lapsewatch.store.models import AddressHistory

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def run(engine: Engine, data: bytes | Path, **options: Any) -> ImportSummary:
    options.setdefault("now", NOW)
    if isinstance(data, Path):
        with data.open("rb") as handle:
            return import_accounts(engine, handle, name=data.name, **options)
    return import_accounts(engine, io.BytesIO(data), **options)


def jsonl(*records: object) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def account(username: str, *emails: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"username": username, **fields, "emails": list(emails)}


def email(address: str, **fields: Any) -> dict[str, Any]:
    return {"address": address, "verified": True, "verified_at": "2020-01-01T00:00:00Z", **fields}


def rows(engine: Engine, model: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execute(select(model.__table__).order_by(*model.__table__.primary_key))
        return [dict(row._mapping) for row in result]


def stored_emails(engine: Engine) -> dict[str, dict[str, Any]]:
    return {row["address"]: row for row in rows(engine, Email)}


def event_kinds(engine: Engine) -> list[str]:
    return [row["kind"] for row in rows(engine, Event)]


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    return {m.__tablename__: rows(engine, m) for m in (Account, Email, Domain, Event)}


# ------------------------------------------------------------------ import


def test_import_jsonl(engine: Engine) -> None:
    summary = run(engine, DATA / "accounts.jsonl")

    assert summary.ok
    assert summary.rejected == ()
    assert (summary.lines, summary.accounts_created, summary.emails_added) == (4, 4, 6)
    assert (summary.accounts_updated, summary.emails_updated, summary.unchanged) == (0, 0, 0)
    assert summary.domains_added == 5
    accounts = {row["username"]: row for row in rows(engine, Account)}
    assert accounts["bob"]["totp_enabled"] is True
    assert accounts["bob"]["projects"] == ["requests-oauth", "bobtools"]
    assert accounts["carol"]["totp_enabled"] is False
    assert accounts["carol"]["projects"] == []

    mails = stored_emails(engine)
    bob = mails["Bob@mail.bob-consulting.co.uk"]  # host normalised, local part kept
    assert bob["domain"] == "bob-consulting.co.uk"
    assert bob["verified_at"] == datetime(2021, 3, 4, 4, 6, 7, tzinfo=UTC)
    assert bob["primary"]
    assert not bob["free_provider"]
    assert mails["bob.backup@gmail.com"]["free_provider"] is True
    assert mails["carol@xn--bcher-kva.example"]["domain"] == "xn--bcher-kva.example"
    assert mails["dave@old-dave.example"]["verified"] is False
    assert mails["dave@old-dave.example"]["verified_at"] == datetime(2015, 1, 1, tzinfo=UTC)

    # Free providers are never checked, so they get no domains row; the others are due now.
    domains_rows = rows(engine, Domain)
    assert sorted(d["name"] for d in domains_rows) == [
        "alice.example",
        "bob-consulting.co.uk",
        "dave.example",
        "old-dave.example",
        "xn--bcher-kva.example",
    ]
    assert all(d["next_due_at"] is None for d in domains_rows)

    # One event per new account, listing the addresses its line gave.
    events = rows(engine, Event)
    assert [e["kind"] for e in events] == ["account.created"] * 4
    assert {e["actor"] for e in events} == {"import"}
    created = next(e for e in events if e["account_id"] == accounts["bob"]["id"])
    assert created["reason"] == "accounts.jsonl line 2"
    assert created["after"] == {
        "username": "bob",
        "owner": "import",
        "totp": True,
        "projects": ["requests-oauth", "bobtools"],
        "emails": [
            {
                "address": "Bob@mail.bob-consulting.co.uk",
                "primary": True,
                "verified": True,
                "verified_at": "2021-03-04T04:06:07Z",
                "free_provider": False,
            },
            {
                "address": "bob.backup@gmail.com",
                "primary": False,
                "verified": True,
                "verified_at": "2021-03-05T00:00:00Z",
                "free_provider": True,
            },
        ],
    }


def test_addresses_added_later_have_their_own_events(engine: Engine) -> None:
    """Another line's address for an account gets an ``email.added`` naming that line."""
    run(engine, DATA / "accounts.csv")  # erin's second address is on the next row
    events = {(e["kind"], e["reason"]): e for e in rows(engine, Event)}
    assert sorted(events) == [
        ("account.created", "accounts.csv line 2"),
        ("account.created", "accounts.csv line 4"),
        ("account.created", "accounts.csv line 6"),
        ("email.added", "accounts.csv line 3"),
    ]
    created = events["account.created", "accounts.csv line 2"]
    assert [e["address"] for e in created["after"]["emails"]] == ["erin@erin.example"]
    added = events["email.added", "accounts.csv line 3"]
    erin = stored_emails(engine)["erin@outlook.com"]
    assert (added["account_id"], added["email_id"]) == (erin["account_id"], erin["id"])
    assert added["domain"] == "outlook.com"
    assert added["after"]["address"] == "erin@outlook.com"

    run(engine, jsonl(account("erin", email("erin@erin2.example"))))
    added = rows(engine, Event)[-1]
    assert (added["kind"], added["domain"]) == ("email.added", "erin2.example")


def test_import_csv(engine: Engine) -> None:
    summary = run(engine, DATA / "accounts.csv")

    assert summary.rejected == ()
    assert (summary.lines, summary.accounts_created, summary.emails_added) == (4, 3, 4)
    accounts = {row["username"]: row for row in rows(engine, Account)}
    assert accounts["erin"]["projects"] == ["erin-lib", "erin-cli"]
    assert accounts["frank"]["totp_enabled"] is True
    mails = stored_emails(engine)
    assert mails["erin@erin.example"]["primary"] is True
    assert mails["erin@outlook.com"]["free_provider"] is True
    assert mails["frank@frank.example"]["verified"] is False  # "Name <addr>" is accepted
    assert mails["grace@grace.example"]["verified_at"] == datetime(2022, 12, 31, tzinfo=UTC)
    assert run(engine, DATA / "accounts.csv").changed is False


def test_csv_is_sniffed_without_extension(engine: Engine) -> None:
    data = (DATA / "accounts.csv").read_bytes()
    summary = run(engine, b"\xef\xbb\xbf" + data)  # with a BOM, from stdin: no name
    assert summary.emails_added == 4


@pytest.mark.parametrize(
    ("name", "first", "kind"),
    [
        ("a.csv", b"{", InputKind.csv),
        ("a.JSONL", b"username,address", InputKind.jsonl),
        (None, b'{"username": "x"}', InputKind.jsonl),
        (None, b'"username","address","verified"', InputKind.csv),
        (None, b"garbage", InputKind.jsonl),
        (None, None, InputKind.jsonl),
    ],
)
def test_detect_kind(name: str | None, first: bytes | None, kind: InputKind) -> None:
    assert importer.detect_kind(name, first) is kind


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"username,address,verified,colour\n", "unknown CSV column 'colour'"),
        (b"username,address\n", "lacks the column(s) verified"),
        (b"username,address,verified,Address\n", "appears twice"),
    ],
)
def test_bad_csv_header_imports_nothing(engine: Engine, header: bytes, message: str) -> None:
    with pytest.raises(ImportInputError, match=re.escape(message)):
        run(engine, header + b"a,a@a.example,true\n", kind=InputKind.csv)
    assert rows(engine, Account) == []


def test_import_twice_changes_nothing(engine: Engine) -> None:
    first = run(engine, DATA / "accounts.jsonl")
    before = snapshot(engine)
    second = run(engine, DATA / "accounts.jsonl", now=datetime(2026, 2, 1, tzinfo=UTC))

    assert first.changed
    assert not second.changed
    assert second.unchanged == second.lines == 4
    assert (second.accounts_created, second.emails_added, second.domains_added) == (0, 0, 0)
    assert snapshot(engine) == before  # no row, no event


def test_bad_lines_are_reported_by_number_and_good_ones_kept(engine: Engine) -> None:
    data = (DATA / "accounts_mixed.jsonl").read_bytes() + b'{"username": "\xff"}\n'
    summary = run(engine, data)

    rejected = {problem.line: problem.message for problem in summary.rejected}
    assert sorted(rejected) == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15]
    assert rejected[2].startswith("not valid JSON")
    assert "is a domain, not an email address" in rejected[3]
    assert rejected[5] == "good1@good.example belongs to another account, 'good1' (line 1)"
    assert rejected[6].startswith("emails[0].verified_at: not an RFC 3339 date")
    assert rejected[7].startswith("unknown key 'admin'")
    assert rejected[8] == "missing key 'username'"
    assert rejected[9] == "totp must be true or false, not a string"
    assert rejected[10].startswith("more than one primary address")
    assert "in the future" in rejected[11]
    assert rejected[12] == "expected a JSON object, got an array"
    assert "public suffix" in rejected[13]
    assert rejected[15] == "not valid UTF-8 (byte 15)"

    assert summary.lines == 15
    assert summary.accounts_created == 3
    assert sorted(r["username"] for r in rows(engine, Account)) == ["good1", "good2", "unicode"]
    mails = stored_emails(engine)
    # Full-width letters and upper case map to the same punycode domain (UTS 46).
    assert mails["ünï@xn--bcher-kva.example"]["domain"] == "xn--bcher-kva.example"
    assert set(mails) == {"good1@good.example", "ünï@xn--bcher-kva.example", "good2@good2.example"}
    assert len(event_kinds(engine)) == 3  # a bad line changes nothing, records nothing


def test_verified_without_date_is_accepted_with_a_warning(engine: Engine) -> None:
    summary = run(engine, jsonl(account("u", {"address": "u@u.example", "verified": True})))
    assert summary.ok
    assert summary.emails_added == 1
    assert summary.warnings_total == 1
    assert "re-registration check cannot apply" in summary.warnings[0].message
    assert stored_emails(engine)["u@u.example"]["verified_at"] is None
    # A later file without the date keeps a known date rather than erasing it.
    run(engine, jsonl(account("u", email("u@u.example"))))
    again = run(engine, jsonl(account("u", {"address": "u@u.example", "verified": True})))
    assert again.warnings_total == 0
    assert not again.changed
    assert stored_emails(engine)["u@u.example"]["verified_at"] == datetime(2020, 1, 1, tzinfo=UTC)


def test_omitted_fields_keep_what_is_stored(engine: Engine) -> None:
    run(engine, jsonl(account("u", email("u@u.example", primary=True), totp=True, projects=["p"])))
    summary = run(engine, jsonl(account("u", email("u@u.example"))))
    assert not summary.changed
    assert rows(engine, Account)[0]["totp_enabled"] is True
    assert stored_emails(engine)["u@u.example"]["primary"] is True


def test_changes_are_recorded_with_before_and_after(engine: Engine) -> None:
    run(engine, jsonl(account("u", email("u@u.example"), totp=False, projects=["a"])))
    summary = run(
        engine,
        jsonl(account("u", email("u@u.example", verified=False), totp=True, projects=["a", "b"])),
    )
    assert (summary.accounts_updated, summary.emails_updated, summary.unchanged) == (1, 1, 0)
    changed = {e["kind"]: e for e in rows(engine, Event)[-2:]}
    assert changed["account.changed"]["before"] == {"totp": False, "projects": ["a"]}
    assert changed["account.changed"]["after"] == {"totp": True, "projects": ["a", "b"]}
    assert changed["email.changed"]["before"] == {"address": "u@u.example", "verified": True}
    assert changed["email.changed"]["after"] == {"address": "u@u.example", "verified": False}


def unverify(engine: Engine, address: str, at: datetime, reason: str = "reregistered") -> None:
    """What the cycle does to an address on a dangerous domain."""
    with engine.begin() as conn:
        conn.execute(
            update(Email)
            .where(Email.address == address)
            .values(
                verified=False,
                unverified_at=at,
                unverify_reason=reason,
                unverify_detail="registered again on 2025-05-20, after the verification",
            )
        )


def test_repeating_an_old_verification_does_not_reverify(engine: Engine) -> None:
    original = jsonl(account("alice", email("alice@alice.example", verified_at="2019-05-01")))
    run(engine, original)
    unverify(engine, "alice@alice.example", datetime(2025, 6, 1, tzinfo=UTC))
    before = snapshot(engine)

    for verified_at in ("2019-05-01", "2025-05-31T23:59:59Z", "2025-06-01T00:00:00Z", None):
        repeat = account("alice", email("alice@alice.example", verified_at=verified_at))
        summary = run(engine, jsonl(repeat))
        assert not summary.changed
        assert summary.unchanged == 1
        assert "stays unverified" in summary.warnings[0].message
    # The registry saying "not verified" agrees; lapsewatch's reason is kept.
    summary = run(engine, jsonl(account("alice", email("alice@alice.example", verified=False))))
    assert not summary.changed
    assert summary.warnings == ()
    assert snapshot(engine) == before


def test_a_newer_verification_reverifies(engine: Engine) -> None:
    run(engine, jsonl(account("alice", email("alice@alice.example", verified_at="2019-05-01"))))
    unverify(engine, "alice@alice.example", datetime(2025, 6, 1, tzinfo=UTC))

    newer = jsonl(account("alice", email("alice@alice.example", verified_at="2025-07-01")))
    summary = run(engine, newer)
    assert summary.emails_updated == 1
    assert summary.warnings == ()
    stored = stored_emails(engine)["alice@alice.example"]
    assert stored["verified"] is True
    assert stored["verified_at"] == datetime(2025, 7, 1, tzinfo=UTC)
    assert stored["unverified_at"] is None
    assert stored["unverify_reason"] is None
    event = rows(engine, Event)[-1]
    assert event["kind"] == "email.reverified"
    assert event["before"]["unverify_reason"] == "reregistered"
    assert event["after"]["verified"] is True
    assert not run(engine, newer).changed


def test_history_keeps_a_registry_unverified_address_from_an_old_verification(
    engine: Engine,
) -> None:
    """The registry unverified the row itself since lapsewatch's unverify (reason gone):
    ``address_history`` still asks for a verified_at later than lapsewatch's unverify."""
    run(engine, jsonl(account("alice", email("alice@alice.example", verified_at="2019-05-01"))))
    with engine.begin() as conn:
        conn.execute(update(Email).values(verified=False))
        conn.execute(
            insert(AddressHistory).values(
                address_key="alice@alice.example",
                domain="alice.example",
                unverified_at=datetime(2025, 6, 1, tzinfo=UTC),
                unverify_reason="redemption",
            )
        )
    before = snapshot(engine)
    summary = run(engine, jsonl(account("alice", email("Alice@alice.example"))))
    assert not summary.changed
    assert "stays unverified" in summary.warnings[0].message
    assert "(redemption) at 2025-06-01T00:00:00Z" in summary.warnings[0].message
    assert snapshot(engine) == before

    newer = jsonl(account("alice", email("alice@alice.example", verified_at="2025-06-02")))
    assert run(engine, newer).emails_updated == 1
    assert stored_emails(engine)["alice@alice.example"]["verified"] is True
    assert not run(engine, newer).changed


def test_addresses_are_matched_whatever_their_case(engine: Engine) -> None:
    data = jsonl(
        account("u", email("Mixed@U.example", primary=True)),
        account("u", email("mixed@u.example", primary=True)),  # the same address: fine
        account("v", email("MIXED@u.example")),
        account("w", email("a@w.example"), email("A@w.example")),
    )
    summary = run(engine, data)
    assert [(p.line, p.message) for p in summary.rejected] == [
        (3, "MIXED@u.example belongs to another account, 'u' (line 1)"),
        (4, "A@w.example is listed twice"),
    ]
    assert list(stored_emails(engine)) == ["Mixed@u.example"]  # stored as first given
    assert stored_emails(engine)["Mixed@u.example"]["address_key"] == "mixed@u.example"
    assert not run(engine, jsonl(account("U", email("MIXED@U.EXAMPLE")))).changed


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("root ", "username 'root ' is refused: a username has 1 to 50"),
        ("r\u043e\u043et", "username 'r\\u043e\\u043et' is refused"),
        ("a\u200bb", "username 'a\\u200bb' is refused"),
        ("x" * 51, "username 'xxxxx"),
        ("-root", "is refused: a username has"),
        ("", "username is empty"),
    ],
)
def test_usernames_follow_the_sign_up_rule(engine: Engine, username: str, message: str) -> None:
    summary = run(engine, jsonl(account(username, email("a@a.example"))))
    assert message in summary.rejected[0].message
    assert rows(engine, Account) == []


def test_usernames_are_stored_in_nfkc_and_matched_by_key(engine: Engine) -> None:
    summary = run(engine, jsonl(account("\uff21lice", email("a@a.example"))))  # full-width A
    assert summary.accounts_created == 1
    (stored,) = rows(engine, Account)
    assert (stored["username"], stored["username_key"], stored["owner"]) == (
        "Alice",
        "alice",
        "import",
    )
    again = run(engine, jsonl(account("ALICE", email("b@a.example"))))
    assert (again.accounts_created, again.emails_added) == (0, 1)


def test_owner_is_recorded_and_only_its_accounts_change(engine: Engine) -> None:
    data = jsonl(account("u", email("u@u.example")))
    assert run(engine, data, owner="api:registry").accounts_created == 1
    assert rows(engine, Account)[0]["owner"] == "api:registry"
    assert rows(engine, Event)[0]["after"]["owner"] == "api:registry"
    assert not run(engine, data, owner="api:registry").changed
    other = run(engine, data, owner="import")
    assert [p.message for p in other.rejected] == [
        "account 'u' is not managed by this import (owner: an API key); nothing changed"
    ]


@pytest.mark.parametrize("owner", ["web", "api:", "imports", "api:" + "x" * 97])
def test_owners_an_import_may_not_have(engine: Engine, owner: str) -> None:
    with pytest.raises(ValueError, match="owner"):
        run(engine, jsonl(account("u", email("u@u.example"))), owner=owner)
    assert rows(engine, Account) == []
    assert importer.check_owner("import") == "import"
    assert importer.check_owner("api:k") == "api:k"


def test_bulk_insert_refuses_to_guess_a_default_computed_from_the_row() -> None:
    with pytest.raises(TypeError, match="username_key"):
        import_write._column_default(Account.__table__.c.username_key)


def test_primary_moves_when_the_file_names_another(engine: Engine) -> None:
    run(engine, jsonl(account("u", email("a@u.example", primary=True))))
    moved = jsonl(account("u", email("b@u.example", primary=True)))
    summary = run(engine, moved)
    assert (summary.emails_added, summary.emails_updated) == (1, 1)
    mails = stored_emails(engine)
    assert mails["b@u.example"]["primary"]
    assert not mails["a@u.example"]["primary"]
    assert not run(engine, moved).changed


@pytest.mark.parametrize("chunk_size", [1, 1000])
def test_lines_that_contradict_each_other(engine: Engine, chunk_size: int) -> None:
    data = jsonl(
        account("u", email("a@u.example", primary=True), totp=True),
        account("u", email("a@u.example", primary=True)),  # same again: fine
        account("u", email("a@u.example", verified=False)),
        account("u", email("b@u.example"), totp=False),
        account("u", email("c@u.example", primary=True)),
        account("v", email("d@v.example", primary=False), email("e@v.example", primary=True)),
    )
    summary = run(engine, data, chunk_size=chunk_size)
    rejected = {problem.line: problem.message for problem in summary.rejected}
    assert rejected == {
        3: "a@u.example is also on line 1, with other values",
        4: "totp is false here but true on line 1",
        5: "'u' already has the primary address a@u.example (line 1)",
    }
    assert summary.unchanged == 1
    assert not run(engine, data, chunk_size=chunk_size).changed  # still idempotent


def test_csv_rows_of_one_account_must_agree(engine: Engine) -> None:
    data = (
        b"username,address,verified,totp,projects\n"
        b"u,a@u.example,true,true,p\n"
        b"u,b@u.example,true,false,p\n"
        b"u,c@u.example,true,,\n"
        b'u,"unterminated,true\n'
    )
    summary = run(engine, data)
    assert [(p.line, p.message) for p in summary.rejected] == [
        (3, "totp is false here but true on line 2"),
        (5, "not valid CSV: unexpected end of data"),
    ]
    assert sorted(stored_emails(engine)) == ["a@u.example", "c@u.example"]


def test_database_failure_keeps_whole_chunks_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = import_reconcile._Chunk._ensure_domains

    def failing(self: import_reconcile._Chunk) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the second chunk's accounts and addresses were inserted
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        return real(self)

    monkeypatch.setattr(import_reconcile._Chunk, "_ensure_domains", failing)
    data = jsonl(*(account(f"u{i}", email(f"u{i}@d{i}.example")) for i in range(6)))
    with pytest.raises(ImportAborted, match="disk I/O error") as caught:
        run(engine, data, chunk_size=2)
    assert caught.value.first_line == 3
    assert caught.value.summary.accounts_created == 2
    assert sorted(r["username"] for r in rows(engine, Account)) == ["u0", "u1"]
    assert len(rows(engine, Event)) == 2

    monkeypatch.setattr(import_reconcile._Chunk, "_ensure_domains", real)
    summary = run(engine, data, chunk_size=2)  # running it again completes the import
    assert (summary.accounts_created, summary.unchanged) == (4, 2)


def test_parsing_in_a_second_process_gives_the_same_result(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    mixed = (DATA / "accounts_mixed.jsonl").read_bytes()
    path.write_bytes(mixed + (DATA / "accounts.jsonl").read_bytes())
    summary = run(engine, path, parallel=True, chunk_size=3)
    assert summary.lines == 18
    assert summary.accounts_created == 7
    assert [p.line for p in summary.rejected] == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    inline = run(engine, path, parallel=False, chunk_size=3)
    assert inline.rejected == summary.rejected
    assert not inline.changed

    bad_header = tmp_path / "bad.csv"
    bad_header.write_bytes(b"username,address,verified,colour\n")
    with pytest.raises(ImportInputError, match="unknown CSV column"):
        run(engine, bad_header, parallel=True)


# ------------------------------------------------------------------ hypothesis

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
_weird = st.one_of(
    _json,
    st.sampled_from(["a@b.example", "x@co.uk", "a@[1.2.3.4]", "@x.example", "ü@ü.example", ""]),
)
_near_valid = st.fixed_dictionaries(
    {
        "username": _weird,
        "emails": st.lists(st.fixed_dictionaries({"address": _weird}), max_size=2),
    },
    optional={"totp": _weird, "projects": _weird},
)
_not_an_object = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=60).map(str.encode),
    _json.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    junk=st.lists(_not_an_object, max_size=6),
    near=st.lists(_near_valid.map(lambda v: json.dumps(v).encode()), max_size=4),
)
def test_junk_never_raises_and_is_never_imported(
    engine: Engine, junk: list[bytes], near: list[bytes]
) -> None:
    lines = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in junk + near]
    before = len(rows(engine, Account))
    summary = run(engine, b"\n".join(lines))

    # A UTF-8 BOM opening the input is not data; blank lines are skipped.
    content = [
        line.removeprefix(b"\xef\xbb\xbf") if n == 1 else line for n, line in enumerate(lines, 1)
    ]
    numbered = [n for n, line in enumerate(content, 1) if line.strip()]
    assert summary.lines == len(numbered)
    rejected = {p.line for p in summary.rejected}
    assert rejected <= set(numbered)
    assert {n for n in numbered if n <= len(junk)} <= rejected  # junk is always rejected
    assert len(rows(engine, Account)) - before <= summary.accounts_created
    for row in rows(engine, Email):  # whatever got in is well-formed
        parsed = domains.parse(row["address"])
        assert (parsed.address, parsed.domain) == (row["address"], row["domain"])
    with engine.connect() as conn:
        primaries = select(Email.account_id, func.count()).where(Email.primary.is_(True))
        assert all(n == 1 for _, n in conn.execute(primaries.group_by(Email.account_id)))


@given(
    st.one_of(
        st.from_regex(r"[A-Za-z0-9.+_'-]{1,12}@[A-Za-z0-9.-]{1,30}", fullmatch=True),
        st.text(max_size=40),
        st.sampled_from(["a@1.2.3.4", "a@x..example", "a@-x.example", "a@xn--zz.example"]),
    )
)
def test_cached_address_parsing_matches_domains_parse(text: str) -> None:
    """The host cache is an optimisation only: same answers, same error messages."""

    def outcome(parse: Any) -> tuple[str, ...]:
        try:
            result = parse(text)
        except domains.DomainError as exc:
            return ("error", str(exc))
        if isinstance(result, domains.EmailDomain):
            if result.address is None:
                return ("error", f"{text.strip()!r} is a domain, not an email address")
            return (result.address, result.domain, str(result.free_provider))
        address, domain, free = result
        return (address, domain, str(free))

    parser = import_validate._AddressParser(domains.load_free_providers())
    expected = outcome(domains.parse)
    assert outcome(parser) == expected
    assert outcome(parser) == expected  # the second time from the cache


# ------------------------------------------------------------------ commands


@pytest.fixture
def cli(database_url: str, engine: Engine) -> CliRunner:
    """Run ``lapsewatch accounts`` against the test database."""
    return CliRunner(env={"LAPSEWATCH_DATABASE_URL": database_url})


def app() -> typer.Typer:
    application = typer.Typer()
    application.add_typer(accounts_app, name="accounts")
    application.command("noop")(lambda: None)  # a group, as in the real CLI
    return application


def test_cli_import_exit_codes(cli: CliRunner) -> None:
    result = cli.invoke(app(), ["accounts", "import", str(DATA / "accounts.jsonl")])
    assert result.exit_code == 0, result.output
    assert "4 lines read: 4 good, 0 rejected" in result.output

    result = cli.invoke(
        app(), ["accounts", "import", str(DATA / "accounts_mixed.jsonl"), "--format", "json"]
    )
    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    assert set(summary) >= {
        "lines",
        "accounts_created",
        "accounts_updated",
        "emails_added",
        "emails_updated",
        "unchanged",
        "rejected",
        "warnings",
    }
    assert summary["rejected"][0] == {"line": 2, "error": summary["rejected"][0]["error"]}
    assert summary["accounts_created"] == 3


def test_cli_import_from_stdin(cli: CliRunner) -> None:
    data = (DATA / "accounts.csv").read_bytes()
    result = cli.invoke(app(), ["accounts", "import", "-", "--format", "json"], input=data)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["emails_added"] == 4


def test_cli_import_missing_file(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(app(), ["accounts", "import", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "cannot read" in result.output
    assert "Traceback" not in result.output


def test_cli_unreachable_database_is_a_clear_error() -> None:
    runner = CliRunner(env={"LAPSEWATCH_DATABASE_URL": "postgresql://u:secret@127.0.0.1:9/x"})
    result = runner.invoke(app(), ["accounts", "import", str(DATA / "accounts.jsonl")])
    assert result.exit_code == 2
    assert "could not open the database" in result.output
    assert "secret" not in result.output
    assert "Traceback" not in result.output


def test_show_json(cli: CliRunner, engine: Engine) -> None:
    run(engine, DATA / "accounts.jsonl")
    unverify(engine, "dave@dave.example", datetime(2025, 6, 1, tzinfo=UTC), reason="redemption")
    with engine.begin() as conn:
        conn.execute(
            update(Domain).where(Domain.name == "dave.example").values(last_verdict="redemption")
        )

    result = cli.invoke(app(), ["accounts", "show", "dave", "--format", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown == {
        "username": "dave",
        "totp": False,
        "projects": [],
        "emails": [
            {
                "address": "dave@dave.example",
                "domain": "dave.example",
                "primary": True,
                "verified": False,
                "verified_at": "2020-02-02T00:00:00Z",
                "unverified_at": "2025-06-01T00:00:00Z",
                "unverify_reason": "redemption",
                "reason": "registered again on 2025-05-20, after the verification",
                "verdict": "redemption",
            },
            {
                "address": "dave@old-dave.example",
                "domain": "old-dave.example",
                "primary": False,
                "verified": False,
                "verified_at": "2015-01-01T00:00:00Z",
                "unverified_at": None,
                "unverify_reason": None,
                "reason": None,
                "verdict": None,
            },
        ],
    }
    table = cli.invoke(app(), ["accounts", "show", "dave"])
    assert table.exit_code == 0
    assert "redemption" in table.output


def test_show_unknown_account(cli: CliRunner) -> None:
    result = cli.invoke(app(), ["accounts", "show", "nobody"])
    assert result.exit_code == 2
    assert "no account named 'nobody'" in result.output


def test_import_leaves_the_process_and_connection_as_it_found_them(engine: Engine) -> None:
    """The cycle collector and SQLite's checkpoint setting are only changed meanwhile."""
    assert gc.isenabled()
    run(engine, DATA / "accounts.jsonl")
    assert gc.isenabled()
    gc.disable()
    try:
        run(engine, DATA / "accounts.csv")
        assert not gc.isenabled()
    finally:
        gc.enable()
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000


def test_statistics_are_refreshed_as_the_import_doubles(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = importer._analyze

    def counting(engine: Engine) -> None:
        calls.append(1)
        real(engine)

    monkeypatch.setattr(importer, "_ANALYZE_FROM", 2)
    monkeypatch.setattr(importer, "_analyze", counting)
    data = jsonl(*(account(f"u{i}", email(f"u{i}@d{i}.example")) for i in range(8)))
    summary = run(engine, data, chunk_size=1)  # two rows a line: after 2, 4, 8 and 16 rows
    assert summary.accounts_created == 8
    assert len(calls) == (4 if engine.dialect.name == "postgresql" else 0)


def test_objects_import_as_their_json_lines_do(tmp_path: Path) -> None:
    """The API passes the items its model read (``import_objects``), with no round trip
    through bytes: the same accounts as the same lines would give, rejections included."""
    from lapsewatch.accounts.importer import import_objects
    from lapsewatch.store import make_engine, upgrade

    items: list[object] = [
        account("alice", email("a@alice.test"), email("a@gmail.com", primary=True)),
        account("bob", email("not an address")),
        ["not", "an", "object"],
        account("bob", email("b@bob.test", verified=False, verified_at=None)),
        account("ALICE", email("a2@alice.test")),
    ]
    summaries = []
    for kind in ("lines", "objects"):
        engine = make_engine(f"sqlite:///{tmp_path / kind}.db")
        upgrade(engine)
        if kind == "lines":
            summary = run(engine, jsonl(*items), name="api", owner="api:k")
        else:
            summary = import_objects(engine, items, name="api", now=NOW, owner="api:k")
        with engine.connect() as conn:
            stored = sorted(conn.execute(select(Email.address, Email.verified)).all())
        summaries.append((summary, stored))
        engine.dispose()
    (by_lines, stored_lines), (by_objects, stored_objects) = summaries
    assert by_objects == by_lines
    assert stored_objects == stored_lines
    assert [p.line for p in by_objects.rejected] == [2, 3]
    assert by_objects.accounts_created == 2
