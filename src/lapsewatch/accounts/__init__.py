"""The registry side: accounts and their addresses.

Bulk import and the read side are re-exported here; the account services
(sign-up, verification, 2FA, reset) live in :mod:`lapsewatch.accounts.service`.
"""

from lapsewatch.accounts.importer import (
    ImportAborted,
    ImportSummary,
    InputError,
    InputKind,
    LineProblem,
    import_accounts,
)
from lapsewatch.accounts.queries import AccountNotFound, AccountView, EmailView, show_account

__all__ = [
    "AccountNotFound",
    "AccountView",
    "EmailView",
    "ImportAborted",
    "ImportSummary",
    "InputError",
    "InputKind",
    "LineProblem",
    "import_accounts",
    "show_account",
]
