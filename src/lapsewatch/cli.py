"""The ``lapsewatch`` command: assembles the sub-commands in ``lapsewatch.commands``.

A sub-command's module is imported only when that sub-command runs (or ``--help``
lists them all): each pulls in a different part of the product (the web app, the
cycle, the scanner), and importing every one made each run start a second later.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from lapsewatch.commands._common import exit_code

if TYPE_CHECKING:
    from typer._click import Command

__all__ = ["COMMANDS", "app", "exit_code", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    # The stable interface (DESIGN.md) first, then the operator's tools.
    "init": ("lapsewatch.commands.init", "init"),
    "domain": ("lapsewatch.commands.domain", "domain"),
    "check": ("lapsewatch.commands.check", "check"),
    "report": ("lapsewatch.commands.report", "report"),
    "accounts": ("lapsewatch.commands.accounts", "accounts_app"),
    "serve": ("lapsewatch.commands.serve", "serve"),
    "scan": ("lapsewatch.commands.scan", "scan"),
    "demo": ("lapsewatch.commands.demo", "demo"),
    "notify": ("lapsewatch.commands.notify", "notify"),
    "worker": ("lapsewatch.commands.worker", "worker"),
    "beat": ("lapsewatch.commands.beat", "beat"),
    "admin": ("lapsewatch.commands.admin", "admin_app"),
    "rdap-bootstrap": ("lapsewatch.commands.bootstrap", "bootstrap_app"),
    "whois-servers": ("lapsewatch.commands.whois_servers", "whois_servers_app"),
}
"""Each sub-command's name: the module and the attribute (a function, or a Typer app of
sub-commands) that define it."""


def load_command(name: str) -> Command:
    """The sub-command ``name``, imported now (``KeyError`` if there is none)."""
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        command: Command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class _Commands(MutableMapping[str, "Command"]):
    """The group's commands: every name known at once (for help, lookups and "did you
    mean"), each command loaded when it is first looked up."""

    def __init__(self) -> None:
        self._loaded: dict[str, Command] = {}

    def __getitem__(self, name: str) -> Command:
        if name not in self._loaded:
            self._loaded[name] = load_command(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class _LazyGroup(TyperGroup):
    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Commands()


app = typer.Typer(
    cls=_LazyGroup,
    help="Stop account takeovers through lapsed email domains.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Makes Typer build a group (its help is the app's); the commands are in COMMANDS."""


def main() -> None:
    app()
