"""domains.mail_hosts, domains.mail_hosts_read_at

* ``domains.mail_hosts``: the mail hosts (MX targets) read at the last healthy check
  outside the auto-renew grace.
* ``domains.mail_hosts_read_at``: when they were read.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00

Name servers changed in the auto-renew grace unverify only when the mail hosts
changed too (an owner moving DNS hosting keeps them; a buyer does not), and a
domain's MX is read at most once per check interval: the checks between use the
stored mail hosts (see docs/verdicts.md and docs/cycle.md). Existing rows start
with neither: their next check reads the MX.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lapsewatch.store.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("domains") as batch:
        batch.add_column(sa.Column("mail_hosts", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("mail_hosts_read_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("domains") as batch:
        batch.drop_column("mail_hosts_read_at")
        batch.drop_column("mail_hosts")
