"""close the takeover paths: account owners, address keys, history, recovery codes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 19:30:00

* ``accounts.owner``: who may change an account (``web``, ``import``, ``api:<key>``).
  Accounts with a password were made by the web app; the rest came from imports.
* ``accounts.username_key`` / ``emails.address_key``: the case-folded forms, unique.
  Rows that already collide (case variants made before this revision) keep
  a key with their id appended, so the upgrade never fails on old data.
* ``address_history``: addresses lapsewatch unverified, filled from the rows
  that are unverified now.
* ``recovery_codes``: one row per code, moved out of the JSON list.
* ``domains.dangerous_at`` / ``dangerous_verdict``, ``webhooks.api_key_id``,
  ``accounts.session_generation`` and ``accounts.totp_pending_secret``.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import sqlalchemy as sa
from alembic import op

import lapsewatch.store.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_DT = lapsewatch.store.models.UTCDateTime(timezone=True)


def _unique_keys(rows: list[tuple[int, str]]) -> dict[int, str]:
    keys: dict[int, str] = {}
    seen: set[str] = set()
    for row_id, key in rows:
        if key in seen:
            key = f"{key}#{row_id}"
        seen.add(key)
        keys[row_id] = key
    return keys


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("username_key", sa.String(length=150), nullable=True))
        batch.add_column(
            sa.Column("owner", sa.String(length=100), server_default="web", nullable=False)
        )
        batch.add_column(
            sa.Column("session_generation", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("totp_pending_secret", sa.String(length=64), nullable=True))
    with op.batch_alter_table("emails") as batch:
        batch.add_column(sa.Column("address_key", sa.String(length=320), nullable=True))
    with op.batch_alter_table("domains") as batch:
        batch.add_column(sa.Column("dangerous_at", _DT, nullable=True))
        batch.add_column(sa.Column("dangerous_verdict", sa.String(length=32), nullable=True))
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(sa.Column("api_key_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_webhooks_api_key_id_api_keys"),
            "api_keys",
            ["api_key_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index(op.f("ix_webhooks_api_key_id"), ["api_key_id"], unique=False)
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=255), nullable=False),
        sa.Column("used_at", _DT, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_recovery_codes_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_codes")),
    )
    op.create_index(
        op.f("ix_recovery_codes_account_id"), "recovery_codes", ["account_id"], unique=False
    )
    op.create_table(
        "address_history",
        sa.Column("address_key", sa.String(length=320), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("unverified_at", _DT, nullable=False),
        sa.Column("unverify_reason", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("address_key", name=op.f("pk_address_history")),
    )

    accounts = sa.table(
        "accounts",
        sa.column("id", sa.Integer()),
        sa.column("username", sa.String()),
        sa.column("username_key", sa.String()),
        sa.column("owner", sa.String()),
        sa.column("password_hash", sa.String()),
        sa.column("recovery_codes", sa.JSON()),
    )
    rows = bind.execute(
        sa.select(accounts.c.id, accounts.c.username, accounts.c.password_hash).order_by(
            accounts.c.id
        )
    ).all()
    keys = _unique_keys(
        [(r[0], unicodedata.normalize("NFKC", r[1]).casefold()[:150]) for r in rows]
    )
    for row_id, _username, password_hash in rows:
        bind.execute(
            accounts.update()
            .where(accounts.c.id == row_id)
            .values(username_key=keys[row_id], owner="web" if password_hash else "import")
        )
    codes: list[dict[str, Any]] = []
    for row_id, stored in bind.execute(sa.select(accounts.c.id, accounts.c.recovery_codes)).all():
        hashes = json.loads(stored) if isinstance(stored, str) else (stored or [])
        codes.extend({"account_id": row_id, "code_hash": h} for h in hashes)
    if codes:
        bind.execute(
            sa.table("recovery_codes", sa.column("account_id"), sa.column("code_hash")).insert(),
            codes,
        )

    emails = sa.table(
        "emails",
        sa.column("id", sa.Integer()),
        sa.column("address", sa.String()),
        sa.column("address_key", sa.String()),
        sa.column("domain", sa.String()),
        sa.column("verified", sa.Boolean()),
        sa.column("unverified_at", _DT),
        sa.column("unverify_reason", sa.String()),
    )
    mails = bind.execute(sa.select(emails.c.id, emails.c.address).order_by(emails.c.id)).all()
    mail_keys = _unique_keys([(r[0], r[1].lower()) for r in mails])
    for row_id, key in mail_keys.items():
        bind.execute(emails.update().where(emails.c.id == row_id).values(address_key=key))
    history = bind.execute(
        sa.select(
            emails.c.address, emails.c.domain, emails.c.unverified_at, emails.c.unverify_reason
        ).where(emails.c.unverified_at.is_not(None), emails.c.unverify_reason.is_not(None))
    ).all()
    merged: dict[str, dict[str, Any]] = {}
    for address, domain, at, reason in history:
        merged[address.lower()] = {
            "address_key": address.lower(),
            "domain": domain,
            "unverified_at": at,
            "unverify_reason": reason,
        }
    if merged:
        op.bulk_insert(
            sa.table(
                "address_history",
                sa.column("address_key", sa.String()),
                sa.column("domain", sa.String()),
                sa.column("unverified_at", _DT),
                sa.column("unverify_reason", sa.String()),
            ),
            list(merged.values()),
        )

    with op.batch_alter_table("accounts") as batch:
        batch.alter_column("username_key", existing_type=sa.String(length=150), nullable=False)
        batch.create_unique_constraint(op.f("uq_accounts_username_key"), ["username_key"])
        batch.drop_column("recovery_codes")
    with op.batch_alter_table("emails") as batch:
        batch.alter_column("address_key", existing_type=sa.String(length=320), nullable=False)
        batch.create_unique_constraint("uq_emails_address_key", ["address_key"])


def downgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        batch.drop_constraint("uq_emails_address_key", type_="unique")
        batch.drop_column("address_key")
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("recovery_codes", sa.JSON(), nullable=True))
        batch.drop_constraint(op.f("uq_accounts_username_key"), type_="unique")
        batch.drop_column("totp_pending_secret")
        batch.drop_column("session_generation")
        batch.drop_column("owner")
        batch.drop_column("username_key")
    op.drop_table("address_history")
    op.drop_index(op.f("ix_recovery_codes_account_id"), table_name="recovery_codes")
    op.drop_table("recovery_codes")
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_index(op.f("ix_webhooks_api_key_id"))
        batch.drop_constraint(op.f("fk_webhooks_api_key_id_api_keys"), type_="foreignkey")
        batch.drop_column("api_key_id")
    with op.batch_alter_table("domains") as batch:
        batch.drop_column("dangerous_verdict")
        batch.drop_column("dangerous_at")
