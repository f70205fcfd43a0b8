"""The registry side: accounts and their addresses.

Bulk import and the read side are re-exported here; the account services
(sign-up, verification, 2FA, reset) live in :mod:`lapsewatch.accounts.service`.
"""

from typing import TYPE_CHECKING

from lapsewatch.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lapsewatch.accounts.importer import (
        ImportAborted,
        ImportInputError,
        ImportSummary,
        InputKind,
        LineProblem,
        import_accounts,
    )
    from lapsewatch.accounts.queries import AccountView, EmailView, UnknownUsername, show_account

__all__ = [
    "AccountView",
    "EmailView",
    "ImportAborted",
    "ImportInputError",
    "ImportSummary",
    "InputKind",
    "LineProblem",
    "UnknownUsername",
    "import_accounts",
    "show_account",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "ImportAborted": "importer",
        "ImportInputError": "importer",
        "ImportSummary": "importer",
        "InputKind": "importer",
        "LineProblem": "importer",
        "import_accounts": "importer",
        "AccountView": "queries",
        "EmailView": "queries",
        "UnknownUsername": "queries",
        "show_account": "queries",
    },
)
