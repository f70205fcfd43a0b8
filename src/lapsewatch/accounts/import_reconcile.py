"""One chunk of good lines against the store: what is stored, plus the lines, gives the changes.

The chunk's accounts and addresses are loaded with a few ``IN`` queries (and
locked, on PostgreSQL), then each line is checked and applied in memory:
ownership (an import changes only the accounts it owns), lines that
contradict earlier ones, the one primary address, and the re-verification
rule (an address lapsewatch unverified stays so unless a later ``verified_at``
comes). Writing the result is :mod:`lapsewatch.accounts.import_write`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, select

from lapsewatch.accounts.import_validate import _EmailIn, _LineIn, _Reject
from lapsewatch.accounts.import_write import (
    _ACCOUNTS_TABLE,
    _EMAILS_TABLE,
    _MAIL_FIELDS,
    _Acct,
    _batches,
    _ChunkWriter,
    _Mail,
)
from lapsewatch.dates import isoformat
from lapsewatch.store.models import Account, AddressHistory, Email

API_OWNER_PREFIX = "api:"
"""``api:<key name>``: the accounts an API key's pushes create and may change."""


class _Lapse(NamedTuple):
    """An unverify ``address_history`` remembers (the address row may be gone)."""

    at: datetime
    reason: str


def _shown_owner(owner: str) -> str:
    """An owner as a rejection says it: another registry's key name is not told."""
    return "an API key" if owner.startswith(API_OWNER_PREFIX) else owner


class _Seen:
    """Which line of this run first set an address or an account field (by their keys).

    Two lines that disagree would flip a row on every import; the later one is
    rejected. Entries of a chunk are undone if the chunk is not committed.
    """

    def __init__(self) -> None:
        self.addresses: dict[str, int] = {}
        self.totp: dict[str, int] = {}
        self.projects: dict[str, int] = {}
        self._undo: list[tuple[dict[str, int], str]] = []
        """Entries made by the current chunk."""

    def address(self, key: str) -> int:
        return self.addresses.get(key, 0)

    def account(self, key: str) -> tuple[int, int]:
        return self.totp.get(key, 0), self.projects.get(key, 0)

    def mark(self, line: _LineIn) -> None:
        for email in line.emails:
            self._first(self.addresses, email.key, line.line)
        if line.totp is not None:
            self._first(self.totp, line.key, line.line)
        if line.projects is not None:
            self._first(self.projects, line.key, line.line)

    def _first(self, table: dict[str, int], key: str, line: int) -> None:
        if key not in table:
            table[key] = line
            self._undo.append((table, key))

    def commit(self) -> None:
        self._undo = []

    def discard(self) -> None:
        for table, key in self._undo:
            del table[key]
        self._undo = []


_MAIL_COLUMNS = (
    Email.id,
    Email.address,
    Email.address_key,
    *(getattr(Email, name) for name in _MAIL_FIELDS),
)


class _Chunk(_ChunkWriter):
    """The part of the store one chunk touches: loaded up front, changed in memory, diffed.

    Accounts are keyed by their username key, addresses by their address key:
    a line is matched to what is stored whatever case or width it spells it in.
    """

    def __init__(self, conn: Connection, lines: Sequence[_LineIn], seen: _Seen, owner: str) -> None:
        self.conn = conn
        self.seen = seen
        self.owner = owner
        self.accounts: dict[str, _Acct] = {}
        self.mails: dict[str, _Mail] = {}
        self.primary: dict[str, str | None] = {}
        """This import's accounts: the key of each one's primary address."""
        self.lapses: dict[str, _Lapse] = {}
        """``address_history`` of the chunk's addresses that are not verified now."""
        self.domains: set[str] = set()
        self._load(
            {line.key for line in lines},
            {email.key for line in lines for email in line.emails},
        )

    def _load(self, usernames: set[str], addresses: set[str]) -> None:
        lock = self.conn.dialect.name == "postgresql"
        for batch in _batches(sorted(usernames)):
            query = select(
                Account.id,
                Account.username,
                Account.username_key,
                Account.owner,
                Account.totp_enabled,
                Account.projects,
            ).where(Account.username_key.in_(batch))
            if lock:  # the web app may change 2FA meanwhile; we compare, then write
                query = query.with_for_update(of=_ACCOUNTS_TABLE)
            for id_, username, key, owner, totp, projects in self.conn.execute(query):
                self.accounts[key] = _Acct(
                    id_, username, key, owner, totp, list(projects), (totp, list(projects))
                )
                if owner == self.owner:
                    self.primary[key] = None
        for batch in _batches(sorted(addresses)):
            self._load_mails(Email.address_key.in_(batch), lock)
        ids = sorted(
            a.id for a in self.accounts.values() if a.id is not None and a.owner == self.owner
        )
        for batch in _batches(ids):
            self._load_mails(Email.account_id.in_(batch) & Email.primary.is_(True), lock)
        # The history only matters to an address that is not verified (or not stored).
        unverified = sorted(
            key
            for key in addresses
            if key not in self.mails or not self.mails[key].fields["verified"]
        )
        for batch in _batches(unverified):
            lapses = select(
                AddressHistory.address_key,
                AddressHistory.unverified_at,
                AddressHistory.unverify_reason,
            ).where(AddressHistory.address_key.in_(batch))
            for key, at, reason in self.conn.execute(lapses):
                self.lapses[key] = _Lapse(at, reason)

    def _load_mails(self, condition: Any, lock: bool) -> None:
        query = (
            select(*_MAIL_COLUMNS, Account.username, Account.username_key, Account.owner)
            .join(Account, Account.id == Email.account_id)
            .where(condition)
        )
        if lock:  # the checker may unverify an address meanwhile: it waits for us
            query = query.with_for_update(of=_EMAILS_TABLE)
        for row in self.conn.execute(query):
            id_, address, key, *values, username, account_key, owner = row
            if key in self.mails:
                continue
            fields = dict(zip(_MAIL_FIELDS, values, strict=True))
            self.mails[key] = _Mail(
                id_, account_key, username, owner, address, key, fields, dict(fields)
            )
            if fields["primary"] and account_key in self.primary:
                self.primary[account_key] = key

    # -- one line

    def apply(self, line: _LineIn) -> tuple[bool, list[str]]:
        """Check ``line`` against the store and earlier lines; apply it if good.

        Raises ``_Reject`` before changing anything. Returns whether the line
        changed something, and its warnings.
        """
        warnings: list[str] = []
        account = self.accounts.get(line.key)
        if account is not None and account.owner != self.owner:
            raise _Reject(
                f"account {account.username!r} is not managed by this import "
                f"(owner: {_shown_owner(account.owner)}); nothing changed"
            )
        name = line.username if account is None else account.username
        totp_line, projects_line = self.seen.account(line.key)
        if account is None:
            totp = bool(line.totp)
            projects = line.projects if line.projects is not None else []
        else:
            totp = account.totp if line.totp is None else line.totp
            projects = account.projects if line.projects is None else line.projects
            if totp_line and totp != account.totp:
                raise _Reject(
                    f"totp is {str(totp).lower()} here but {str(account.totp).lower()} "
                    f"on line {totp_line}"
                )
            if projects_line and projects != account.projects:
                raise _Reject(f"projects differ from those on line {projects_line}")

        planned: list[tuple[_EmailIn, _Mail | None, dict[str, Any]]] = []
        for email in line.emails:
            mail = self.mails.get(email.key)
            earlier = self.seen.address(email.key)
            if mail is not None and mail.account != line.key:
                if mail.owner != self.owner:  # whose it is is none of this import's business
                    raise _Reject(
                        f"{email.address} belongs to an account not managed by this import; "
                        "nothing changed"
                    )
                where = f" (line {earlier})" if earlier else ""
                raise _Reject(
                    f"{email.address} belongs to another account, {mail.username!r}{where}"
                )
            fields, warning = self._fields(email, mail, self.lapses.get(email.key))
            if mail is not None and earlier and fields != mail.fields:
                raise _Reject(f"{email.address} is also on line {earlier}, with other values")
            if warning:
                warnings.append(warning)
            planned.append((email, mail, fields))

        listed = {email.key for email in line.emails}
        primaries = [email.address for email, _, fields in planned if fields["primary"]]
        demote: _Mail | None = None
        current = self.primary.get(line.key)
        if current is not None and current not in listed and primaries:
            demote = self.mails[current]
            earlier = self.seen.address(current)
            if earlier:
                raise _Reject(
                    f"{name!r} already has the primary address {demote.address} (line {earlier})"
                )
            # the file names another primary: it wins
        if len(primaries) > 1:
            raise _Reject(f"more than one primary address: {', '.join(primaries)}")

        # Every check passed: apply.
        changed = False
        creating = account is None
        if account is None:
            account = _Acct(None, name, line.key, self.owner, totp, projects, None, line.line)
            self.accounts[line.key] = account
            self.primary[line.key] = None
            changed = True
        elif totp != account.totp or projects != account.projects:
            account.totp, account.projects = totp, projects
            if account.original is not None:  # a new account's event names its creating line
                account.line = line.line
            changed = True
        for email, mail, fields in planned:
            if mail is None:
                new = _Mail(
                    None,
                    line.key,
                    name,
                    self.owner,
                    email.address,
                    email.key,
                    fields,
                    None,
                    line.line,
                    creating,
                )
                self.mails[email.key] = new
                if creating:
                    account.created_with.append(new)
                changed = True
            elif fields != mail.fields:
                mail.fields, mail.line = fields, line.line
                changed = True
            if fields["primary"]:
                self.primary[line.key] = email.key
            elif self.primary.get(line.key) == email.key:
                self.primary[line.key] = None
            if not email.free_provider:
                self.domains.add(email.domain)
        if demote is not None:
            demote.fields = {**demote.fields, "primary": False}
            demote.line = line.line
            changed = True
        self.seen.mark(line)
        return changed, warnings

    @staticmethod
    def _fields(
        email: _EmailIn, mail: _Mail | None, lapse: _Lapse | None
    ) -> tuple[dict[str, Any], str | None]:
        """The address's columns once ``email`` is applied, with the re-verification rule.

        lapsewatch's unverify counts whether the stored row records it, or only
        ``address_history`` does (``lapse``: the row was removed, or the registry
        unverified the row since): the address becomes verified again only by a
        ``verified_at`` later than every unverify.
        """
        fields: dict[str, Any]
        if mail is None:
            fields = {
                "domain": email.domain,
                "free_provider": email.free_provider,
                "primary": bool(email.primary),
                "verified": email.verified,
                "verified_at": email.verified_at,
                "unverified_at": None,
                "unverify_reason": None,
                "unverify_detail": None,
            }
        else:
            fields = dict(mail.fields)
            fields["domain"], fields["free_provider"] = email.domain, email.free_provider
            if email.primary is not None:
                fields["primary"] = email.primary
        stored_unverify = (
            mail is not None and fields["unverify_reason"] is not None and not fields["verified"]
        )
        unverifies: list[tuple[datetime | None, str]] = []
        if stored_unverify:
            since = fields["unverified_at"] or fields["verified_at"]
            unverifies.append((since, fields["unverify_reason"]))
        if lapse is not None and (mail is None or not fields["verified"]):
            unverifies.append((lapse.at, lapse.reason))
        if unverifies and email.verified:
            # lapsewatch unverified it: only a newer verification undoes that.
            when = email.verified_at
            blocking = [
                (since, reason)
                for since, reason in unverifies
                if when is None or since is None or when <= since
            ]
            if blocking:
                dated = [(at, why) for at, why in blocking if at is not None]
                since, reason = max(dated) if dated else blocking[0]
                removed = ""
                if mail is None and lapse is not None:  # removed, and imported again
                    fields.update(_lapsed(lapse), verified=False)
                    removed = " before it was removed"
                return fields, (
                    f"{email.address} stays unverified: lapsewatch unverified it "
                    f"({reason}) at {isoformat(since)}{removed}, and the import "
                    "gives no verified_at later than that"
                )
            if stored_unverify:
                fields.update(
                    verified=True,
                    verified_at=when,
                    unverified_at=None,
                    unverify_reason=None,
                    unverify_detail=None,
                )
                return fields, None
            # Only the history, and a verification after it: the registry's own, as usual.
        elif stored_unverify:
            return fields, None  # the registry agrees it is not verified; our reason is kept
        elif mail is None and lapse is not None:
            fields.update(_lapsed(lapse))  # added again unverified: as lapsewatch left it
        if mail is not None:
            fields["verified"] = email.verified
            if email.verified_at is not None:
                fields["verified_at"] = email.verified_at
        if fields["verified"] and fields["verified_at"] is None:
            return fields, (
                f"{email.address} is verified without verified_at: "
                "the re-registration check cannot apply to it"
            )
        return fields, None


def _lapsed(lapse: _Lapse) -> dict[str, Any]:
    """The unverify columns of an address added again after lapsewatch unverified it."""
    return {
        "unverified_at": lapse.at,
        "unverify_reason": lapse.reason,
        "unverify_detail": (
            f"lapsewatch unverified this address ({lapse.reason}) at {isoformat(lapse.at)}; "
            "it was removed and imported again since, without a later verification"
        ),
    }
