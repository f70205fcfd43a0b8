"""mail_host_verdicts.registered_at: the registration date a kept verdict was drawn with

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 12:00:00

A domain's mail-host domain registered after the domain's MX was read naming it is a
new registration of it, whose holder now receives the mail (issue #17, found by
bench/window.py). The comparison needs the mail-host domain's registration date,
also when its verdict comes from a kept one; rows kept before this have none, and
are asked again within a week.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lapsewatch.store.models import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mail_host_verdicts") as batch:
        batch.add_column(sa.Column("registered_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mail_host_verdicts") as batch:
        batch.drop_column("registered_at")
