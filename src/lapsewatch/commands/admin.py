"""``lapsewatch admin ...``: what an operator needs to bootstrap the web app.

Admins, API keys and webhooks are made here, on the server, and never through
the web: the first admin cannot be made by a web page nobody can log into yet,
and a key shown in a terminal never crosses the network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from lapsewatch.accounts.errors import AccountError
from lapsewatch.accounts.passwords import Passwords, check_policy
from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.commands._common import Format, console, fail, load_settings
from lapsewatch.commands.accounts import open_store
from lapsewatch.config import ConfigError
from lapsewatch.dates import isoformat
from lapsewatch.formats import json as json_format
from lapsewatch.names import InvalidName, check_username, username_key
from lapsewatch.store import Account, make_sessionmaker
from lapsewatch.store.events import record
from lapsewatch.web.apikeys import (
    KeyNameInvalid,
    KeyNameTaken,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from lapsewatch.web.config import WebSettings
from lapsewatch.web.webhooks import (
    InvalidWebhookUrl,
    add_webhook,
    deliver_webhooks,
    list_webhooks,
    remove_webhook,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["admin_app"]

ACTOR = "cli"

admin_app = typer.Typer(
    help="Operate the web app: admins, API keys for registries, webhooks.",
    no_args_is_help=True,
)
webhook_app = typer.Typer(help="Webhooks told (HMAC-signed) of every unverification.")
admin_app.add_typer(webhook_app, name="webhook")


def _now() -> datetime:
    return datetime.now(UTC)


def _plain(item: DataclassInstance) -> dict[str, object]:
    """A dataclass as JSON-ready values (dates as ISO 8601)."""
    values = dataclasses.asdict(item)
    return {k: isoformat(v) if isinstance(v, datetime) else v for k, v in values.items()}


def _store() -> Engine:
    return open_store(load_settings())


@contextmanager
def _transaction() -> Iterator[Session]:
    """The command's one transaction: committed when the block ends, rolled back on an error."""
    engine = _store()
    try:
        with make_sessionmaker(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def _web_settings() -> WebSettings:
    try:
        return WebSettings.from_env()
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _set_admin(username: str, value: bool) -> None:
    with _transaction() as session:
        account = session.scalar(
            select(Account).where(Account.username_key == username_key(username))
        )
        if account is None:
            raise fail(f"no account is named {username!r}")
        if value and account.owner != "web":
            # An import or an API key can change this account's addresses; an admin
            # must be reachable only through its own person.
            raise fail(f"{username!r} belongs to {account.owner}, not to a person; not granted")
        if account.is_admin != value:
            account.is_admin = value
            record(
                session,
                at=_now(),
                actor=ACTOR,
                kind="account.admin_granted" if value else "account.admin_revoked",
                account_id=account.id,
                after={"is_admin": value},
            )
    console.print(f"{username} is {'now' if value else 'no longer'} an admin", highlight=False)
    if value:
        console.print(_NEEDS_2FA, highlight=False)


_NEEDS_2FA = (
    "admins need two-factor authentication: sign in at /account/login and turn it on at "
    "/account/2fa; until then no admin page or action opens"
)


@admin_app.command("create-admin")
def create_admin(
    username: Annotated[str, typer.Argument(help="The new admin's username.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            help="Asked for when not given.",
        ),
    ],
) -> None:
    """Create an admin account (no address yet: add and verify one on its security page).

    The admin pages open only once the account has turned on two-factor authentication.
    """
    minimum = AccountSettings.min_password_length
    try:
        username = check_username(username)
        check_policy(password, username=username, minimum=minimum, maximum=1024)
    except (AccountError, InvalidName) as exc:
        raise fail(str(exc)) from None
    password_hash = Passwords().hash(password)
    with _transaction() as session:
        taken = select(Account.id).where(Account.username_key == username_key(username))
        if session.scalar(taken) is not None:
            raise fail(f"{username!r} exists; make it an admin with: lapsewatch admin grant")
        account = Account(
            username=username,
            created_at=_now(),
            password_hash=password_hash,
            projects=[],
            is_admin=True,
        )
        session.add(account)
        session.flush()
        record(session, at=_now(), actor=ACTOR, kind="account.created", account_id=account.id)
        record(
            session,
            at=_now(),
            actor=ACTOR,
            kind="account.admin_granted",
            account_id=account.id,
            after={"is_admin": True},
        )
    console.print(f"admin {username} created; sign in at /account/login", highlight=False)
    console.print(_NEEDS_2FA, highlight=False)


@admin_app.command("grant")
def grant(username: Annotated[str, typer.Argument(help="An existing account.")]) -> None:
    """Make an existing account an admin."""
    _set_admin(username, True)


@admin_app.command("revoke")
def revoke(username: Annotated[str, typer.Argument(help="An admin account.")]) -> None:
    """Take the admin role away (effective on the account's next request)."""
    _set_admin(username, False)


@admin_app.command("api-key")
def api_key(
    name: Annotated[str, typer.Argument(help="Who the key is for, e.g. a registry.")],
) -> None:
    """Make an API key; it is printed once and only its hash is kept.

    Accounts its pushes create belong to it (owner ``api:NAME``); no other key and
    no import can change them.
    """
    try:
        with _transaction() as session:
            key = create_api_key(session, name, now=_now())
    except (KeyNameTaken, KeyNameInvalid) as exc:
        raise fail(str(exc)) from None
    console.print(key, highlight=False, soft_wrap=True)


@admin_app.command("owner")
def owner(
    to: Annotated[str, typer.Option("--to", help="The new owner: 'import' or 'api:KEYNAME'.")],
    usernames: Annotated[
        list[str] | None, typer.Argument(help="Accounts to hand over (default: --from's).")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--from", help="Hand over every account of this owner.")
    ] = None,
) -> None:
    """Hand accounts made by an import or an API key to another import or key.

    Each account belongs to whoever made it, and only its owner's pushes and
    imports may change it. A registry that moves from file imports to the API
    (or renames its key) hands its accounts over here. Accounts made through
    the web app belong to their people and are never handed over.
    """
    with _transaction() as session:
        keys = {k.name for k in list_api_keys(session) if k.revoked_at is None}
    if not (to == "import" or (to.startswith("api:") and to[4:] in keys)):
        raise fail(f"--to {to!r}: expected 'import' or 'api:NAME' of a live API key")
    if source == "web" or not (source or usernames):
        raise fail("name the accounts, or --from import / --from api:NAME")
    now = _now()
    moved = 0
    with _transaction() as session:
        query = select(Account).where(Account.owner != "web")
        if usernames:
            query = query.where(Account.username_key.in_([username_key(u) for u in usernames]))
        if source:
            query = query.where(Account.owner == source)
        for account in session.scalars(query):
            if account.owner == to:
                continue
            record(
                session,
                at=now,
                actor=ACTOR,
                kind="account.owner_changed",
                account_id=account.id,
                before={"owner": account.owner},
                after={"owner": to},
            )
            account.owner = to
            moved += 1
    console.print(f"{moved} account(s) now belong to {to}", highlight=False)


@admin_app.command("revoke-api-key")
def revoke_key(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke an API key at once."""
    with _transaction() as session:
        revoked = revoke_api_key(session, name, now=_now())
    if not revoked:
        raise fail(f"no live API key is named {name!r}")
    console.print(f"API key {name!r} revoked", highlight=False)


@admin_app.command("api-keys")
def api_keys(
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """List API keys (names and dates; the keys themselves are not kept)."""
    with _transaction() as session:
        keys = list_api_keys(session)
    if output is Format.json:
        console.print_json(json_format.dumps([_plain(k) for k in keys]))
        return
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "live"
        console.print(f"{key.name}\tcreated {key.created_at:%Y-%m-%d}\t{state}", highlight=False)


@webhook_app.command("add")
def webhook_add(url: Annotated[str, typer.Argument(help="An http(s) URL to POST to.")]) -> None:
    """Register a webhook; its signing secret is printed once.

    Its host must resolve to public addresses only, unless LAPSEWATCH_WEBHOOK_ALLOW
    (comma list of CIDRs) allows an internal network.
    """
    allow = _web_settings().webhook_allow
    try:
        with _transaction() as session:
            hook = add_webhook(session, url, now=_now(), allow=allow)
    except InvalidWebhookUrl as exc:
        raise fail(str(exc)) from None
    console.print(f"webhook {hook.id}: {hook.url}\nsecret: {hook.secret}", highlight=False)


@webhook_app.command("list")
def webhook_list(
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """The active webhooks, everybody's (``key`` is the id of the API key that made one)."""
    with _transaction() as session:
        hooks = list_webhooks(session)
    if output is Format.json:
        console.print_json(json_format.dumps([_plain(h) for h in hooks]))
        return
    for hook in hooks:
        made_by = "cli" if hook.api_key_id is None else f"key {hook.api_key_id}"
        console.print(
            f"{hook.id}\t{hook.url}\tsince {hook.created_at:%Y-%m-%d}\t{made_by}",
            highlight=False,
        )


@webhook_app.command("remove")
def webhook_remove(webhook_id: Annotated[int, typer.Argument(help="The webhook's id.")]) -> None:
    """Stop a webhook (its delivery history is kept)."""
    with _transaction() as session:
        removed = remove_webhook(session, webhook_id)
    if not removed:
        raise fail(f"no active webhook has the id {webhook_id}")
    console.print(f"webhook {webhook_id} stopped", highlight=False)


@admin_app.command("deliver-webhooks")
def deliver(
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Queue and send webhook deliveries once (run it from cron, or use serve's loop)."""
    summary = deliver_webhooks(_store(), allow=_web_settings().webhook_allow)
    if output is Format.json:
        console.print_json(json_format.dumps(dataclasses.asdict(summary)))
        return
    console.print(
        f"queued {summary.queued}, delivered {summary.delivered}, "
        f"failed {summary.failed} (will retry), gave up {summary.gave_up}",
        highlight=False,
    )
