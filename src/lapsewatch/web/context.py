"""What every request handler needs, built once by ``create_app`` and kept on ``app.state``.

One object instead of module globals, so several apps (tests: one per database)
can live in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Concatenate, ParamSpec, TypeVar

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lapsewatch.accounts.core import call
from lapsewatch.accounts.service import AccountService
from lapsewatch.config import Settings
from lapsewatch.cycle.domaincheck import DomainChecker
from lapsewatch.domains import FreeProviders
from lapsewatch.schedule import Policy
from lapsewatch.web.config import WebSettings

__all__ = ["WebContext", "get_context"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class WebContext:
    engine: Engine
    sessions: sessionmaker[Session]
    accounts: AccountService
    settings: Settings
    """The check cycle's settings (sources, schedule) for "check this domain now"."""
    checker: DomainChecker
    policy: Policy
    free_providers: FreeProviders
    clock: Callable[[], datetime]
    secret_key: str
    """Signs session cookies and session stamps (``LAPSEWATCH_SECRET_KEY``)."""
    secure_cookies: bool
    """Served over HTTPS (the base URL says so): cookies get the ``Secure`` flag."""
    web: WebSettings
    """Body limits, the webhook allow-list, how long a re-authentication counts."""

    def run(
        self, action: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``action(session, ...)`` in a transaction the request owns
        (:func:`lapsewatch.accounts.core.call`)."""
        return call(self.sessions, action, *args, **kwargs)


def get_context(request: Request) -> WebContext:
    context = request.app.state.context
    assert isinstance(context, WebContext)
    return context
