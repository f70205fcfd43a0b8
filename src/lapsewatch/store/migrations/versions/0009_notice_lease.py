"""notices.lease_until: a notice being sent is claimed with a lease, not a row lock

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 15:00:00

The outbox held ``SELECT … FOR UPDATE`` on a notice while it talked SMTP, so a slow
mail server held a database lock (issue #14: no lock waits on the network). A run
now claims a notice with a lease in a short transaction, sends with no transaction
open, and commits ``sent_at`` afterwards; a run that dies mid-send leaves the lease to
expire, and the notice is sent by a later run (at least once, as before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lapsewatch.store.models import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notices") as batch:
        batch.add_column(sa.Column("lease_until", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notices") as batch:
        batch.drop_column("lease_until")
