"""Accounts in every domain state, and how to read the outcome back, for cycle tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from lapsewatch.config import Settings
from lapsewatch.domains import parse
from lapsewatch.store import Account, Domain, Email, Event, Notice, make_sessionmaker
from lapsewatch.world import World

NOW = datetime.now(UTC).replace(microsecond=0)
LONG_AGO = datetime(2019, 5, 1, tzinfo=UTC)
RECENTLY = NOW - timedelta(days=5)

# username -> [(address, verified_at or None for never verified)]
ACCOUNTS: dict[str, list[tuple[str, datetime | None]]] = {
    "alice": [("alice@alive.test", LONG_AGO), ("alice@gmail.com", LONG_AGO)],
    "bob": [("bob@redeeming.test", LONG_AGO), ("bob@proton.me", LONG_AGO)],
    "carol": [("carol@caught.test", LONG_AGO)],
    "carl": [("carl@caught.test", RECENTLY)],  # verified after the new registration
    "dave": [("dave@vacant.test", LONG_AGO), ("dave@deleting.test", LONG_AGO)],
    "erin": [("erin@lapsing.test", LONG_AGO), ("erin@mail.lapsing.test", None)],
    "frank": [("frank@parked.test", LONG_AGO), ("frank@alive.test", LONG_AGO)],
    "grace": [("grace@rdap-broken.test", LONG_AGO)],
    "heidi": [("heidi@camel.test", LONG_AGO), ("heidi@example.zz", LONG_AGO)],
}

# address -> verdict that must unverify it (absent: stays as it was)
EXPECTED_UNVERIFIED = {
    "bob@redeeming.test": "redemption",
    "carol@caught.test": "reregistered",
    "dave@vacant.test": "available",
    "dave@deleting.test": "pending_delete",
    "erin@lapsing.test": "expiring",
    "frank@parked.test": "for_sale",
    "heidi@camel.test": "expiring",
}


def seed(engine: Engine) -> None:
    """The registry as an import would leave it (addresses, and a row per custom domain)."""
    with make_sessionmaker(engine).begin() as session:
        domains: set[str] = set()
        for username, emails in ACCOUNTS.items():
            account = Account(username=username, created_at=LONG_AGO, projects=[f"{username}-pkg"])
            for index, (address, verified_at) in enumerate(emails):
                parsed = parse(address)
                account.emails.append(
                    Email(
                        address=parsed.address or address,
                        domain=parsed.domain,
                        free_provider=parsed.free_provider,
                        primary=index == 0,
                        verified=verified_at is not None,
                        verified_at=verified_at,
                    )
                )
                if not parsed.free_provider:
                    domains.add(parsed.domain)
            session.add(account)
        session.add_all(Domain(name=name, consecutive_failures=0) for name in sorted(domains))


def add_verified(
    engine: Engine, username: str, address: str, verified_at: datetime = LONG_AGO
) -> None:
    """One account with one address, verified at ``verified_at`` (long before)."""
    with make_sessionmaker(engine).begin() as session:
        account = Account(username=username, created_at=verified_at, projects=[])
        account.emails.append(
            Email(
                address=address,
                domain=address.rsplit("@", 1)[1],
                primary=True,
                verified=True,
                verified_at=verified_at,
            )
        )
        session.add(account)


def state(engine: Engine) -> dict[str, Any]:
    """Everything a cycle may change, in a form two runs can be compared by."""
    with make_sessionmaker(engine)() as session:
        emails = {
            e.address: (e.verified, e.unverify_reason)
            for e in session.scalars(select(Email).order_by(Email.address))
        }
        events = sorted(
            (e.kind, e.domain or "", str(e.email_id), e.reason or "")
            for e in session.scalars(select(Event))
        )
        notices = sorted(
            (n.account_id, n.to_address or "", n.kind, n.subject)
            for n in session.scalars(select(Notice))
        )
        verdicts = {d.name: d.last_verdict for d in session.scalars(select(Domain))}
    return {"emails": emails, "events": events, "notices": notices, "verdicts": verdicts}


def settings_for(world: World, **extra: str) -> Settings:
    """Short timeouts and few attempts: the world's failing domains fail fast."""
    env = {
        **world.env(),
        "LAPSEWATCH_TIMEOUT": "0.5",
        "LAPSEWATCH_ATTEMPTS": "2",
        "LAPSEWATCH_MAX_RETRY_AFTER": "1",
        **extra,
    }
    return Settings.from_env(env)
