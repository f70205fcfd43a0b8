"""The caller owns the transaction: API keys and webhooks change nothing the caller
does not commit, and a refused change leaves the caller's transaction to roll back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from lapsewatch.store import make_sessionmaker
from lapsewatch.web.apikeys import (
    KeyNameTaken,
    authenticate,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from lapsewatch.web.webhooks import add_webhook, list_webhooks, remove_webhook
from tests.web_support import LOOPBACK

NOW = datetime(2026, 12, 1, tzinfo=UTC)
HOOK = "http://127.0.0.1:9/hook"


@contextmanager
def rolled_back(engine: Engine) -> Iterator[Session]:
    """A caller's transaction that ends in a rollback."""
    with make_sessionmaker(engine)() as session:
        session.begin()
        yield session
        session.rollback()


def committed(engine: Engine, work: Callable[[Session], object]) -> object:
    """``work`` in a caller's transaction, committed if it returns, rolled back if it raises."""
    with make_sessionmaker(engine).begin() as session:
        return work(session)


def test_an_api_key_made_in_a_rolled_back_transaction_does_not_exist(engine: Engine) -> None:
    with rolled_back(engine) as session:
        key = create_api_key(session, "registry", now=NOW)
        assert authenticate(session, key) is not None  # seen inside the transaction
    with make_sessionmaker(engine)() as session:
        assert list_api_keys(session) == []
        assert authenticate(session, key) is None


def test_a_revoke_rolled_back_leaves_the_key_live(engine: Engine) -> None:
    key = committed(engine, lambda session: create_api_key(session, "registry", now=NOW))
    assert isinstance(key, str)
    with rolled_back(engine) as session:
        assert revoke_api_key(session, "registry", now=NOW)
    with make_sessionmaker(engine)() as session:
        assert authenticate(session, key) is not None


def test_a_taken_name_rolls_the_callers_transaction_back(engine: Engine) -> None:
    committed(engine, lambda session: create_api_key(session, "registry", now=NOW))

    def hook_then_same_name(session: Session) -> None:
        add_webhook(session, HOOK, now=NOW, allow=LOOPBACK.webhook_allow)
        create_api_key(session, "registry", now=NOW)

    with pytest.raises(KeyNameTaken):
        committed(engine, hook_then_same_name)
    with make_sessionmaker(engine)() as session:
        assert [k.name for k in list_api_keys(session)] == ["registry"]
        assert list_webhooks(session) == []  # the webhook went with the transaction


def test_webhooks_change_only_when_the_caller_commits(engine: Engine) -> None:
    with rolled_back(engine) as session:
        add_webhook(session, HOOK, now=NOW, allow=LOOPBACK.webhook_allow)
    with make_sessionmaker(engine)() as session:
        assert list_webhooks(session) == []
    with make_sessionmaker(engine).begin() as session:
        hook = add_webhook(session, HOOK, now=NOW, allow=LOOPBACK.webhook_allow)
    with rolled_back(engine) as session:
        assert remove_webhook(session, hook.id)
    with make_sessionmaker(engine)() as session:
        assert [h.id for h in list_webhooks(session)] == [hook.id]
