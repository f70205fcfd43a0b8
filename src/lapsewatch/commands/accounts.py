"""``lapsewatch accounts import FILE`` and ``lapsewatch accounts show USERNAME``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, BinaryIO

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from lapsewatch import domains
from lapsewatch.accounts.importer import (
    DEFAULT_OWNER,
    ImportAborted,
    ImportInputError,
    check_owner,
    import_accounts,
)
from lapsewatch.accounts.queries import UnknownUsername, show_account
from lapsewatch.commands._common import EXIT_BAD_INPUT, Format, console, errors, fail, load_settings
from lapsewatch.config import Settings
from lapsewatch.formats import accounts as accounts_format
from lapsewatch.formats import json as json_format
from lapsewatch.store import make_engine, upgrade

__all__ = ["accounts_app", "database_error", "open_store"]

accounts_app = typer.Typer(
    help="Accounts and their addresses: import them from the registry, show one.",
    no_args_is_help=True,
)

_PROGRESS_MIN_BYTES = 1 << 20


def database_error(exc: BaseException) -> str:
    """The driver's own message: no SQL statement dump, no help link."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_store(settings: Settings) -> Engine:
    """The configured database, at the newest schema (so no ``init`` is needed first)."""
    try:
        engine = make_engine(settings.database_url)
        upgrade(engine)
    except (SQLAlchemyError, OSError) as exc:
        shown = make_url_safe(settings.database_url)
        raise fail(f"could not open the database {shown}: {database_error(exc)}") from None
    return engine


def make_url_safe(url: str) -> str:
    """The URL without its password, fit for an error message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable LAPSEWATCH_DATABASE_URL)"


def _free_providers(settings: Settings) -> domains.FreeProviders:
    try:
        return domains.load_free_providers(settings.free_providers_file)
    except (OSError, domains.DomainError) as exc:
        raise fail(f"LAPSEWATCH_FREE_PROVIDERS: {exc}") from None


@contextmanager
def _progress(size: int | None) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when it is a terminal and the input is big (or unsized)."""
    if not errors.is_terminal or (size is not None and size < _PROGRESS_MIN_BYTES):
        yield None
        return
    columns = [*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn()]
    with Progress(*columns, TimeRemainingColumn(), console=errors, transient=True) as bar:
        task = bar.add_task("importing", total=size)
        yield lambda done: bar.update(task, completed=done)


@contextmanager
def _input(file: str) -> Iterator[tuple[BinaryIO, int | None]]:
    if file == "-":
        yield sys.stdin.buffer, None
        return
    try:
        handle = open(file, "rb")  # noqa: SIM115 - closed below, after the import
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror or exc}") from None
    with handle:
        try:
            size: int | None = os.fstat(handle.fileno()).st_size
        except OSError:
            size = None
        yield handle, size


@accounts_app.command("import")
def import_command(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="JSON Lines (one account a line) or CSV (one address a row); '-' reads stdin.",
            show_default=False,
        ),
    ],
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    owner: Annotated[
        str,
        typer.Option(
            "--owner",
            metavar="NAME",
            help=(
                "Who the imported accounts belong to: 'import', or 'api:<key name>' to seed "
                "the accounts that API key's pushes manage. Lines naming an account (or an "
                "address) of another owner are rejected; the web app's accounts (owner "
                "'web': sign-up, admin create-admin) are never changed by an import."
            ),
        ),
    ] = DEFAULT_OWNER,
) -> None:
    """Import accounts and addresses; safe to repeat (an unchanged line changes nothing).

    Bad lines are reported by number and skipped, good ones imported; the exit
    code is 2 when any line was rejected. An import creates and changes only
    accounts of its --owner. Usernames follow the sign-up rule (ASCII letters,
    digits, '.', '_', '-'; nothing trimmed) and are matched whatever their case,
    as addresses are. An address lapsewatch unverified, even one removed since,
    is only verified again by a verified_at later than the unverify.
    """
    try:
        owner = check_owner(owner)
    except ValueError as exc:
        raise fail(escape(f"--owner: {exc}")) from None
    settings = load_settings()
    free = _free_providers(settings)
    engine = open_store(settings)
    with _input(file) as (stream, size), _progress(size) as progress:
        try:
            summary = import_accounts(
                engine,
                stream,
                name=None if file == "-" else file,
                free_providers=free,
                progress=progress,
                owner=owner,
            )
        except ImportInputError as exc:
            raise fail(f"{file}: {exc}; nothing was imported") from None
        except ImportAborted as exc:
            done = exc.summary
            raise fail(
                f"{exc}. Lines before {exc.first_line} were imported "
                f"({done.accounts_created} accounts created, {done.emails_added} addresses "
                f"added); nothing from line {exc.first_line} on. Importing the same file "
                "again is safe."
            ) from None
        except OSError as exc:
            raise fail(f"cannot read {file}: {exc}") from None
        finally:
            engine.dispose()
    if output is Format.json:
        console.print_json(json_format.dumps(accounts_format.import_summary(summary)))
    else:
        accounts_format.print_import_summary(console, summary)
    if not summary.ok:
        raise typer.Exit(EXIT_BAD_INPUT)


@accounts_app.command("show")
def show_command(
    username: Annotated[str, typer.Argument(help="The account's username.", show_default=False)],
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Show an account: each address's state, and why it was unverified."""
    engine = open_store(load_settings())
    try:
        view = show_account(engine, username)
    except UnknownUsername:
        raise fail(f"no account named {username!r}") from None
    except SQLAlchemyError as exc:
        raise fail(f"database error: {database_error(exc)}") from None
    finally:
        engine.dispose()
    if output is Format.json:
        console.print_json(json_format.dumps(accounts_format.account(view)))
    else:
        accounts_format.print_account(console, view)
