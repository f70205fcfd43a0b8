"""The registry side: accounts and their addresses.

Bulk import and the read side are re-exported here; the account services
(sign-up, verification, 2FA, reset) live in :mod:`lapsewatch.accounts.service`.
"""

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
