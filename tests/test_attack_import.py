"""Issue #10, the importer's part: what a registry's file or an API key's push may change.

Every test goes through the real command line (``lapsewatch accounts import``),
on SQLite and on PostgreSQL; ``POST /api/v1/addresses`` is the same importer
with ``owner="api:<key name>"`` (``--owner`` here).

* H1: an import or a push cannot attach an address to, unverify, or re-verify
  an address of an account it does not own: not the web admin's, not a web
  user's, not another API key's. Otherwise ``forgot password`` mails the attacker.
* M1: a case variant of an address lapsewatch unverified is that address, and
  an address removed after the unverify comes back unverified
  (``address_history``): an old ``verified_at`` verifies neither.
* Low: usernames follow sign-up's rule (no look-alike letters, no invisible or
  right-to-left characters, nothing trimmed) and are matched by their key.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, insert, select, update
from typer.testing import CliRunner

from lapsewatch.accounts.tokens import TokenKind, issue
from lapsewatch.cli import app
from lapsewatch.store import Account, Email, Event, make_sessionmaker
from lapsewatch.store.models import AddressHistory, Token

NOW = datetime.now(UTC).replace(microsecond=0)
LONG_AGO = "2020-01-01T00:00:00Z"
UNVERIFIED_AT = NOW - timedelta(days=10)
ROOT_ADDRESS = "root@rootcorp.test"
MALLORY = "mallory@attacker.test"


@pytest.fixture
def cli(database_url: str, engine: Engine) -> CliRunner:
    """``lapsewatch`` against the test database (migrated by ``engine``)."""
    return CliRunner(env={"LAPSEWATCH_DATABASE_URL": database_url})


def line(username: str, *emails: dict[str, Any]) -> dict[str, Any]:
    return {"username": username, "emails": list(emails)}


def mail(address: str, **fields: Any) -> dict[str, Any]:
    return {"address": address, "verified": True, "verified_at": LONG_AGO, **fields}


def import_lines(
    cli: CliRunner, *records: dict[str, Any], owner: str | None = None
) -> tuple[int, dict[str, Any]]:
    """Run ``lapsewatch accounts import - --format json``: its exit code and summary."""
    data = b"".join(json.dumps(record).encode() + b"\n" for record in records)
    return import_bytes(cli, data, owner=owner)


def import_bytes(
    cli: CliRunner, data: bytes, *, owner: str | None = None
) -> tuple[int, dict[str, Any]]:
    args = ["accounts", "import", "-", "--format", "json"]
    if owner is not None:
        args += ["--owner", owner]
    result = cli.invoke(app, args, input=data)
    assert result.exit_code in (0, 2), result.output
    return result.exit_code, json.loads(result.stdout)


def errors(summary: dict[str, Any]) -> dict[int, str]:
    return {item["line"]: item["error"] for item in summary["rejected"]}


def web_account(engine: Engine, username: str, address: str, *, admin: bool = False) -> int:
    """An account made by the web app's sign-up (or ``admin create-admin``)."""
    with make_sessionmaker(engine).begin() as session:
        account = Account(
            username=username,
            owner="web",
            password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
            created_at=NOW - timedelta(days=900),
            projects=["ctx"],
            is_admin=admin,
        )
        account.emails.append(
            Email(
                address=address,
                domain=address.rsplit("@", 1)[1],
                primary=True,
                verified=True,
                verified_at=NOW - timedelta(days=800),
            )
        )
        session.add(account)
        session.flush()
        return account.id


def lapsewatch_unverifies(engine: Engine, address: str, reason: str = "reregistered") -> None:
    """What the check cycle does to an address on a dangerous domain (row and history)."""
    with engine.begin() as conn:
        domain = conn.execute(select(Email.domain).where(Email.address == address)).scalar_one()
        conn.execute(
            update(Email)
            .where(Email.address == address)
            .values(
                verified=False,
                unverified_at=UNVERIFIED_AT,
                unverify_reason=reason,
                unverify_detail="registered again after the verification",
            )
        )
        conn.execute(
            insert(AddressHistory).values(
                address_key=address.lower(),
                domain=domain,
                unverified_at=UNVERIFIED_AT,
                unverify_reason=reason,
            )
        )


def emails_of(engine: Engine, username: str) -> dict[str, dict[str, Any]]:
    """``username``'s addresses (by their stored text) and their state."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Email.address, Email.primary, Email.verified, Email.unverify_reason)
            .join(Account, Account.id == Email.account_id)
            .where(Account.username == username)
        )
        return {
            address: {"primary": primary, "verified": verified, "unverify_reason": reason}
            for address, primary, verified, reason in rows
        }


def reset_targets(engine: Engine, username: str) -> set[str]:
    """Where ``forgot password`` for ``username`` sends mail: its verified addresses."""
    return {a for a, state in emails_of(engine, username).items() if state["verified"]}


def store_state(engine: Engine) -> tuple[list[Any], list[Any], int]:
    with engine.connect() as conn:
        accounts = conn.execute(
            select(
                Account.username, Account.owner, Account.totp_enabled, Account.projects
            ).order_by(Account.id)
        ).all()
        emails = conn.execute(select(Email).order_by(Email.id)).all()
        events = conn.execute(select(func.count()).select_from(Event)).scalar_one()
    return list(accounts), list(emails), events


# ------------------------------------------------------------------ H1: owners


@pytest.mark.parametrize("owner", [None, "api:registry"])
def test_attack_import_cannot_attach_an_address_to_the_web_admin(
    cli: CliRunner, engine: Engine, owner: str | None
) -> None:
    """The repro: a verified, primary mallory address on ``root``, then reset."""
    web_account(engine, "root", ROOT_ADDRESS, admin=True)
    before = store_state(engine)

    code, summary = import_lines(
        cli,
        line("root", mail(MALLORY, verified_at=NOW.isoformat(), primary=True)),
        line("ROOT", mail(MALLORY, primary=True)),  # the case variant is root too
        line("Root", mail(ROOT_ADDRESS, verified=False), mail(MALLORY)),
        owner=owner,
    )

    assert code == 2
    refused = "account 'root' is not managed by this import (owner: web); nothing changed"
    assert errors(summary) == {1: refused, 2: refused, 3: refused}
    assert summary["accounts_created"] == summary["emails_added"] == 0
    assert store_state(engine) == before  # not a row, not an event
    assert reset_targets(engine, "root") == {ROOT_ADDRESS}


@pytest.mark.parametrize("owner", [None, "api:registry"])
def test_attack_import_cannot_unverify_or_take_a_web_users_address(
    cli: CliRunner, engine: Engine, owner: str | None
) -> None:
    web_account(engine, "alice", "alice@alicecorp.test")
    before = store_state(engine)

    code, summary = import_lines(
        cli,
        line("alice", mail("alice@alicecorp.test", verified=False)),
        # The address under another (new) name, in another case: still alice's.
        line("mallory", mail("ALICE@alicecorp.test", verified=False)),
        line("mallory2", mail("Alice@AliceCorp.test", primary=True)),
        owner=owner,
    )

    assert code == 2
    rejected = errors(summary)
    assert rejected[1] == (
        "account 'alice' is not managed by this import (owner: web); nothing changed"
    )
    for number in (2, 3):  # refused without telling whose it is
        assert rejected[number].endswith(
            "belongs to an account not managed by this import; nothing changed"
        )
        assert "alice'" not in rejected[number]
    assert store_state(engine) == before
    assert reset_targets(engine, "alice") == {"alice@alicecorp.test"}


def test_attack_import_cannot_reverify_a_web_address_lapsewatch_unverified(
    cli: CliRunner, engine: Engine
) -> None:
    web_account(engine, "carol", "carol@lapsed.test")
    lapsewatch_unverifies(engine, "carol@lapsed.test")
    before = store_state(engine)

    later = (UNVERIFIED_AT + timedelta(days=1)).isoformat()
    for owner in (None, "api:registry"):
        code, summary = import_lines(
            cli, line("carol", mail("carol@lapsed.test", verified_at=later)), owner=owner
        )
        assert code == 2
        assert "not managed by this import (owner: web)" in errors(summary)[1]
    assert store_state(engine) == before
    assert reset_targets(engine, "carol") == set()


def test_attack_api_key_changes_only_its_own_accounts(cli: CliRunner, engine: Engine) -> None:
    """Each API key (and the CLI's ``import``) owns what it created, and nothing else."""
    code, summary = import_lines(
        cli, line("dave", mail("dave@dave.test", primary=True)), owner="api:registry-a"
    )
    assert (code, summary["accounts_created"]) == (0, 1)
    with engine.connect() as conn:
        assert conn.execute(select(Account.owner)).scalar_one() == "api:registry-a"
    before = store_state(engine)

    attempts = [
        line("dave", mail(MALLORY, primary=True)),
        line("dave", mail("dave@dave.test", verified=False)),
        line("eve", mail("DAVE@dave.test")),
    ]
    for owner in ("api:registry-b", None):
        code, summary = import_lines(cli, *attempts, owner=owner)
        assert code == 2
        rejected = errors(summary)
        # Another registry's key name is not told.
        assert rejected[1] == (
            "account 'dave' is not managed by this import (owner: an API key); nothing changed"
        )
        assert rejected[2] == rejected[1]
        assert "not managed by this import" in rejected[3]
        assert "dave'" not in rejected[3]
    assert store_state(engine) == before

    # Its own key may: the registry's own changes are the registry's business.
    code, summary = import_lines(
        cli, line("dave", mail("dave@dave.test", verified=False)), owner="api:registry-a"
    )
    assert (code, summary["emails_updated"]) == (0, 1)


@pytest.mark.parametrize(
    "owner", ["web", "", "api:", "api: ", "admin", "api:" + "k" * 97, "api:a\x00b"]
)
def test_attack_import_cannot_claim_the_web_apps_accounts(
    cli: CliRunner, engine: Engine, owner: str
) -> None:
    """``--owner web`` (or any owner that is not an import's) is refused outright."""
    web_account(engine, "root", ROOT_ADDRESS, admin=True)
    before = store_state(engine)
    data = json.dumps(line("root", mail(MALLORY, primary=True))).encode() + b"\n"
    result = cli.invoke(app, ["accounts", "import", "-", "--owner", owner], input=data)
    assert result.exit_code == 2
    assert "error: --owner: " in result.output  # refused, not an unknown option
    assert "Traceback" not in result.output
    assert store_state(engine) == before


# ------------------------------------------------------------------ M1: resurrection


def test_resurrection_by_case_variant_stays_unverified(cli: CliRunner, engine: Engine) -> None:
    """The repro: ``CTX3@lapsed2.test`` after lapsewatch unverified ``ctx3@lapsed2.test``."""
    code, _ = import_lines(cli, line("ctx3", mail("ctx3@lapsed2.test", primary=True)))
    assert code == 0
    lapsewatch_unverifies(engine, "ctx3@lapsed2.test")
    before = store_state(engine)

    for variant in ("CTX3@lapsed2.test", "Ctx3@LAPSED2.test", "ctx3@lapsed2.test"):
        code, summary = import_lines(cli, line("ctx3", mail(variant, primary=True)))
        assert code == 0
        assert summary["emails_added"] == summary["emails_updated"] == 0
        assert summary["unchanged"] == 1
        assert "stays unverified" in summary["warnings"][0]["warning"]
    assert store_state(engine) == before  # no new row for the variant
    assert reset_targets(engine, "ctx3") == set()

    # A verification after the unverify is the registry's own, as before.
    later = (UNVERIFIED_AT + timedelta(days=1)).isoformat()
    code, summary = import_lines(cli, line("ctx3", mail("CTX3@lapsed2.test", verified_at=later)))
    assert (code, summary["emails_updated"], summary["emails_added"]) == (0, 1, 0)
    assert reset_targets(engine, "ctx3") == {"ctx3@lapsed2.test"}


def test_resurrection_of_a_removed_address_stays_unverified(cli: CliRunner, engine: Engine) -> None:
    """Removed after the unverify, imported again with the old date: still unverified."""
    import_lines(cli, line("ctx4", mail("ctx4@gmail.com"), mail("ctx4@lapsed4.test")))
    lapsewatch_unverifies(engine, "ctx4@lapsed4.test", reason="pending_delete")
    with engine.begin() as conn:  # the registry (or its user) removes the address
        conn.execute(delete(Email).where(Email.address == "ctx4@lapsed4.test"))
    just_after = UNVERIFIED_AT.isoformat()  # not later than the unverify

    for variant, verified_at in (
        ("ctx4@lapsed4.test", LONG_AGO),
        ("CTX4@lapsed4.test", just_after),
        ("ctx4@lapsed4.test", None),
    ):
        code, summary = import_lines(
            cli, line("ctx4", mail(variant, verified_at=verified_at, primary=True))
        )
        assert code == 0
        assert "stays unverified" in summary["warnings"][0]["warning"]
        assert reset_targets(engine, "ctx4") == {"ctx4@gmail.com"}
    # It came back as lapsewatch left it: unverified, and why.
    state = emails_of(engine, "ctx4")["ctx4@lapsed4.test"]
    assert state == {"primary": True, "verified": False, "unverify_reason": "pending_delete"}

    later = (UNVERIFIED_AT + timedelta(seconds=1)).isoformat()
    code, summary = import_lines(cli, line("ctx4", mail("ctx4@lapsed4.test", verified_at=later)))
    assert (code, summary["emails_updated"]) == (0, 1)
    assert reset_targets(engine, "ctx4") == {"ctx4@gmail.com", "ctx4@lapsed4.test"}


def test_resurrection_through_a_new_account_stays_unverified(
    cli: CliRunner, engine: Engine
) -> None:
    """The account is gone too; a new account with the address gets it unverified."""
    import_lines(cli, line("ctx5", mail("ctx5@lapsed5.test")))
    lapsewatch_unverifies(engine, "ctx5@lapsed5.test")
    with engine.begin() as conn:
        conn.execute(delete(Account).where(Account.username == "ctx5"))

    code, summary = import_lines(cli, line("ctx5-new", mail("Ctx5@lapsed5.test", primary=True)))
    assert (code, summary["accounts_created"], summary["emails_added"]) == (0, 1, 1)
    assert "stays unverified" in summary["warnings"][0]["warning"]
    assert reset_targets(engine, "ctx5-new") == set()
    code, summary = import_lines(cli, line("ctx5-new", mail("Ctx5@lapsed5.test", primary=True)))
    assert (code, summary["unchanged"]) == (0, 1)  # and it stays so: idempotent


@pytest.mark.parametrize("owner", [None, "api:registry"])
def test_attack_an_imported_unverify_revokes_the_links_sent_to_the_address(
    cli: CliRunner, engine: Engine, owner: str | None
) -> None:
    """A reset (or verification) link mailed before an import or a push unverified the
    address must not work again once a later one verifies the address anew."""
    addresses = ("gina@gina.test", "gina@gmail.com")
    code, _ = import_lines(
        cli, line("gina", mail(addresses[0], primary=True), mail(addresses[1])), owner=owner
    )
    assert code == 0
    with make_sessionmaker(engine).begin() as session:
        account = session.scalars(select(Account).where(Account.username == "gina")).one()
        ids = {e.address: e.id for e in account.emails}
        for kind, address in [
            (TokenKind.PASSWORD_RESET, addresses[0]),
            (TokenKind.VERIFY_EMAIL, addresses[0]),
            (TokenKind.PASSWORD_RESET, addresses[1]),
        ]:
            issue(
                session,
                kind,
                account_id=account.id,
                email_id=ids[address],
                now=NOW,
                ttl=timedelta(hours=1),
            )

    code, summary = import_lines(cli, line("gina", mail(addresses[0], verified=False)), owner=owner)
    assert (code, summary["emails_updated"]) == (0, 1), summary
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    code, summary = import_lines(
        cli, line("gina", mail(addresses[0], verified_at=later)), owner=owner
    )
    assert (code, summary["emails_updated"]) == (0, 1), summary
    assert reset_targets(engine, "gina") == set(addresses)  # verified again ...
    with engine.connect() as conn:
        used = dict(conn.execute(select(Token.email_id, Token.used_at)).all())
        kinds = conn.execute(
            select(Token.kind).where(Token.email_id == ids[addresses[0]], Token.used_at.is_(None))
        ).all()
    assert kinds == []  # ... but the links sent before the unverify are dead for good
    assert used[ids[addresses[1]]] is None  # the other address's link is untouched


# ------------------------------------------------------------------ Low: usernames


@pytest.mark.parametrize(
    "username",
    [
        "r\u043e\u043et",  # Cyrillic o's
        "ro\u200bot",  # zero-width space
        "\u202eroot",  # right-to-left override
        "root\u200d",  # zero-width joiner
        "root ",
        " root",
        "root\t",
        "ro ot",
    ],
)
def test_attack_lookalike_usernames_are_refused(
    cli: CliRunner, engine: Engine, username: str
) -> None:
    web_account(engine, "root", ROOT_ADDRESS, admin=True)
    before = store_state(engine)

    code, summary = import_lines(cli, line(username, mail(MALLORY, primary=True)))
    assert code == 2
    assert errors(summary)[1].startswith("username ")
    assert store_state(engine) == before  # neither root's nor a new account
    assert reset_targets(engine, "root") == {ROOT_ADDRESS}


def test_attack_csv_username_with_a_trailing_space_is_not_root(
    cli: CliRunner, engine: Engine
) -> None:
    """CSV cells are trimmed, but not the username: ``"root "`` is refused, not root."""
    web_account(engine, "root", ROOT_ADDRESS, admin=True)
    before = store_state(engine)
    data = (
        b"username,address,primary,verified,verified_at\n"
        b'"root ",' + MALLORY.encode() + b",true,true,2020-01-01T00:00:00Z\n"
        b"root," + MALLORY.encode() + b",true,true,2020-01-01T00:00:00Z\n"
    )
    code, summary = import_bytes(cli, data)
    assert code == 2
    rejected = errors(summary)
    assert rejected[2].startswith("username 'root ' is refused")
    assert "not managed by this import (owner: web)" in rejected[3]
    assert store_state(engine) == before


def test_takeover_by_username_case_variant_finds_the_same_account(
    cli: CliRunner, engine: Engine
) -> None:
    """``Erin``, ``ERIN`` and a full-width ``erin`` are one account, not three."""
    code, summary = import_lines(
        cli,
        line("Erin", mail("erin@erin.test", primary=True)),
        line("ERIN", mail("erin@gmail.com")),
        line("\uff45\uff52\uff49\uff4e", mail("erin2@erin.test")),  # full-width
    )
    assert code == 0, summary
    assert (summary["accounts_created"], summary["emails_added"]) == (1, 3)
    with engine.connect() as conn:
        assert conn.execute(select(Account.username, Account.username_key)).all() == [
            ("Erin", "erin")
        ]
    assert set(emails_of(engine, "Erin")) == {
        "erin@erin.test",
        "erin@gmail.com",
        "erin2@erin.test",
    }

    # A web account named like an imported one (in another case) is still the web's.
    web_account(engine, "Frank", "frank@frank.test")
    code, summary = import_lines(cli, line("frank", mail(MALLORY)))
    assert code == 2
    assert errors(summary)[1].startswith("account 'Frank' is not managed by this import")


def test_attack_web_accounts_are_never_handed_to_an_api_key(cli: CliRunner, engine: Engine) -> None:
    """``admin owner`` moves a registry's accounts between its imports and its key;
    a web account stays its person's, so the root/mallory push stays refused."""
    web_account(engine, "root", ROOT_ADDRESS, admin=True)
    assert cli.invoke(app, ["admin", "api-key", "registry"]).exit_code == 0
    assert import_lines(cli, line("alice", mail("alice@own.test")))[0] == 0  # owner: import
    refused = cli.invoke(app, ["admin", "owner", "--to", "api:registry", "--from", "web"])
    assert refused.exit_code != 0
    moved = cli.invoke(app, ["admin", "owner", "--to", "api:registry", "root", "alice"])
    assert moved.exit_code == 0, moved.output
    assert "1 account(s)" in moved.output
    with make_sessionmaker(engine)() as session:
        owners = dict(session.execute(select(Account.username, Account.owner)).all())
    assert owners == {"root": "web", "alice": "api:registry"}
    code, summary = import_lines(
        cli, line("root", mail(MALLORY, primary=True)), owner="api:registry"
    )
    assert code == 2
    assert "not managed by this import" in errors(summary)[1]
    assert cli.invoke(app, ["admin", "owner", "--to", "api:nobody", "alice"]).exit_code != 0


def test_attack_an_api_key_name_too_long_for_its_owner_name_is_refused(cli: CliRunner) -> None:
    assert cli.invoke(app, ["admin", "api-key", "k" * 97]).exit_code != 0
    assert cli.invoke(app, ["admin", "api-key", "k" * 96]).exit_code == 0


def test_attack_an_imported_account_cannot_be_made_admin(cli: CliRunner) -> None:
    """Its owner (an import, an API key) can change its addresses: no admin role for it."""
    assert import_lines(cli, line("bob", mail("bob@own.test")))[0] == 0
    refused = cli.invoke(app, ["admin", "grant", "bob"])
    assert refused.exit_code != 0
    assert "not to a person" in refused.output
