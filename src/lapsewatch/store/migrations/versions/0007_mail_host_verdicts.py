"""mail_host_verdicts: a mail-host domain's last safe verdict, kept for a day

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 10:00:00

A mail-host domain (the registrable domain of an MX host on another domain) was
checked once per cycle run, that is at each hourly run where a domain behind it
was due. Its ``registered`` verdict on the registry's record now stands, for every
domain behind it, for a day, or less when that mail-host domain would be due
itself sooner on the check schedule; see docs/cycle.md.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lapsewatch.store.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mail_host_verdicts",
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.String(20), nullable=True),
        sa.Column("checked_at", UTCDateTime(), nullable=False),
        sa.Column("good_until", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_mail_host_verdicts")),
    )
    op.create_index(op.f("ix_mail_host_verdicts_good_until"), "mail_host_verdicts", ["good_until"])


def downgrade() -> None:
    op.drop_index(op.f("ix_mail_host_verdicts_good_until"), table_name="mail_host_verdicts")
    op.drop_table("mail_host_verdicts")
