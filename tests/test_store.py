"""The schema: migrations match the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, select

from lapsewatch.store import Account, Base, Email, make_engine, make_sessionmaker, upgrade
from lapsewatch.store.schema import current_revision, head_revision


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    assert current_revision(engine) == head_revision()


def test_upgrade_twice_is_harmless(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_datetimes_come_back_aware_utc(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    when = datetime(2019, 5, 1, 12, 30, tzinfo=UTC)
    with sessions.begin() as session:
        account = Account(username="alice", created_at=when, projects=["ctx"])
        account.emails.append(
            Email(address="a@alice.test", domain="alice.test", verified=True, verified_at=when)
        )
        session.add(account)
    with sessions() as session:
        email = session.scalars(select(Email)).one()
        assert email.verified_at == when
        assert email.verified_at.tzinfo is not None
        assert email.account.projects == ["ctx"]


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with pytest.raises(Exception, match="naive datetime"), sessions.begin() as session:
        session.add(Account(username="bob", created_at=datetime(2020, 1, 1)))


def test_upgrade_keeps_existing_rows(database_url: str) -> None:
    """A registry on an older schema upgrades in place, its accounts intact."""
    from alembic import command
    from sqlalchemy import text

    from lapsewatch.store.schema import alembic_config

    engine = make_engine(database_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO accounts (username, totp_enabled, projects, created_at) "
                "VALUES ('old', false, '[]', '2020-01-01 00:00:00')"
            )
        )
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        account = session.scalars(select(Account)).one()
        assert account.username == "old"
        assert account.is_admin is False
        assert account.owner == "import"  # no password: it came from a registry's file
        assert account.username_key == "old"
    engine.dispose()


def test_upgrade_to_known_mail_hosts_reads_the_mx_next(database_url: str) -> None:
    """0006: existing domain rows get no mail hosts and no read time, so their next
    check reads the MX (and the grace rule falls back to the name servers until then)."""
    from alembic import command
    from sqlalchemy import text

    from lapsewatch.cycle.due import select_due
    from lapsewatch.schedule import Policy
    from lapsewatch.store.schema import alembic_config

    engine = make_engine(database_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO domains (name, consecutive_failures, nameservers) "
                "VALUES ('old.test', 0, '[\"ns1.old.test\"]')"
            )
        )
    upgrade(engine)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    with make_sessionmaker(engine).begin() as session:
        account = Account(username="old", created_at=now)
        account.emails.append(Email(address="o@old.test", domain="old.test", verified=True))
        session.add(account)
    with make_sessionmaker(engine)() as session:
        (due,) = select_due(session, now=now, limit=None)
    assert due.known_nameservers == ("ns1.old.test",)
    assert due.known_mail_hosts == ()
    assert due.mail_hosts_read_at is None
    assert due.read_mail_hosts(Policy(), now)
    engine.dispose()
